#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh machine: system packages, the Python
# virtualenv with the project and its dev tools, and the control-plane binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*" >&2; }

need_apt=()
command -v git >/dev/null || need_apt+=(git)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v curl >/dev/null || need_apt+=(curl)
# Workspace images are often busybox: the pod script is tested under it too.
command -v busybox >/dev/null || need_apt+=(busybox)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "installing system packages: ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || { log "apt-get update failed"; exit 1; }
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
    || { log "apt-get install ${need_apt[*]} failed"; exit 1; }
fi
id postgres >/dev/null 2>&1 || { log "the postgres system user is missing (the Debian postgresql package creates it)"; exit 1; }
# The Debian package starts a cluster of its own; the project never uses it.

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { log "Python >= 3.11 required ($PY is $("$PY" --version))"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "installing the project and its dev tools into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

log "control-plane binaries"
scripts/build-k8s.sh >/dev/null
log "ready"
