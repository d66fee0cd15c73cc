"""The git adapter: a hardened CLI runner and the shared upstream resolver."""

from plugin_operator.git.resolver import Resolver
from plugin_operator.git.runner import GitError, GitRunner, GitTimeout, map_git_error

__all__ = ["GitError", "GitRunner", "GitTimeout", "Resolver", "map_git_error"]
