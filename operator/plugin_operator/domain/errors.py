"""Typed errors. Each carries the condition reason it maps to and whether a
person must act (`permanent`: the object is Stalled) or the operator just
retries later (a temporary outage)."""

from __future__ import annotations


class PluginError(Exception):
    reason: str = "Error"
    permanent: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidSpec(PluginError):
    reason = "InvalidSpec"


class InvalidSource(InvalidSpec):
    reason = "InvalidSource"


class InvalidTrack(InvalidSpec):
    reason = "InvalidTrack"


class InvalidPlugin(PluginError):
    """The plugin tree or its plugin.yaml / manifest.json is malformed."""

    reason = "InvalidPlugin"


class RepositoryNotFound(PluginError):
    reason = "RepositoryNotFound"


class RefNotFound(PluginError):
    reason = "RefNotFound"


class SourceUnreachable(PluginError):
    """Network trouble, timeouts, 5xx: retried with backoff."""

    reason = "SourceUnreachable"
    permanent = False


class RedirectRefused(PluginError):
    """The git host answered with a redirect; redirects are never followed
    (the configured base URL is the only host the operator talks to)."""

    reason = "RedirectRefused"


class UnsafeTree(PluginError):
    """Symlinks, hardlinks, special files or escaping paths."""

    reason = "UnsafeTree"


class TreeTooLarge(PluginError):
    reason = "TreeTooLarge"


class TreeLimitExceeded(TreeTooLarge):
    """Too many files, nesting too deep, a name or path too long (design §4)."""

    reason = "TreeLimitExceeded"


class StagingFailed(PluginError):
    """The operator's own disk failed while staging (ENOSPC, EIO …): retried."""

    reason = "StagingFailed"
    permanent = False


class IntegrityMismatch(PluginError):
    reason = "IntegrityMismatch"


class Conflict(PluginError):
    reason = "Conflict"


class DeliveryFailed(PluginError):
    """An in-pod step failed; retried."""

    reason = "DeliveryFailed"
    permanent = False
