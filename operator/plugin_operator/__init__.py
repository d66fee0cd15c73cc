"""plugin-operator: installs plugins into agent-workspace pods and keeps them current."""

GROUP = "plugins.workspace.dev"
VERSION = "v1alpha1"
