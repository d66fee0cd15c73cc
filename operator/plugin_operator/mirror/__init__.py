"""Postgres mirror of PluginInstalls and PluginUpdates (design §7).

- `MirrorService`: what the handlers call (async, never raises, self-healing);
- `Mirror`: the blocking writes and the resync, one transaction each;
- `migrate.upgrade`: the Alembic migrations shipped in `migrations/`.
"""

from plugin_operator.mirror.service import ListObjects, MirrorService
from plugin_operator.mirror.store import Mirror, ResyncResult

__all__ = ["ListObjects", "Mirror", "MirrorService", "ResyncResult"]
