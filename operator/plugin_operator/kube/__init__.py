"""Kubernetes API adapter: the calls the operator makes besides kopf's own."""
