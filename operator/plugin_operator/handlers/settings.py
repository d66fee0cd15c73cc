"""The operator's settings, read from the environment once, when the
handlers are imported: the timers' intervals are fixed at decoration time,
and a bad value stops the process before kopf starts (naming the variable)."""

from plugin_operator.config import Settings

SETTINGS = Settings.from_env()
