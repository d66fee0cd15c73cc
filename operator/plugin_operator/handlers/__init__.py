"""kopf glue only: decorators, kwargs -> reconcilers, error mapping.

Importing this package registers every handler.
"""

from plugin_operator.handlers import installs, startup, updates  # noqa: F401
