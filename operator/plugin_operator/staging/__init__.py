"""Staging: fetch, verify and cache plugin trees; tar them for delivery."""

from plugin_operator.staging.stager import StagedPlugin, Stager, tar_stream

__all__ = ["StagedPlugin", "Stager", "tar_stream"]
