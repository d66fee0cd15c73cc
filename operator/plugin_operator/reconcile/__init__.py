"""What the operator does, per object: install, uninstall, drift, updates.

Called from the kopf handlers (and from each other); talks to the adapters
and decides with the domain. Knows nothing of kopf.
"""
