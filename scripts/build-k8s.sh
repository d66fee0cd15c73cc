#!/usr/bin/env bash
# Builds the local control plane's binaries (etcd, kube-apiserver,
# kube-controller-manager, kubectl, kwok) from pinned versions through the Go
# module proxy, into a cache directory keyed by every version. A complete,
# working cache is reused; anything else is rebuilt. Prints the directory.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"

CACHE_ROOT="${PLUGIN_OPERATOR_CACHE:-$HOME/.cache/plugin-operator}"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
BIN_DIR="$CACHE_ROOT/bin/$KEY"
LOG="$CACHE_ROOT/build-$KEY.log"

export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
export GOPATH="$CACHE_ROOT/go/path"
export GOFLAGS="-modcacherw -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local

log() { echo "build-k8s: $*" >&2; }

# Each binary must run and report its pinned version. (Output is captured
# first: `cmd | grep -q` can fail under pipefail when grep exits early.)
reports() {
  local want="$1" out
  shift
  [ -x "$1" ] || return 1
  out="$("$@" 2>/dev/null)" || return 1
  [[ "$out" == *"$want"* ]]
}

cache_ok() {
  reports "${ETCD_VERSION#v}" "$BIN_DIR/etcd" --version \
    && reports "$K8S_VERSION" "$BIN_DIR/kube-apiserver" --version \
    && reports "$K8S_VERSION" "$BIN_DIR/kube-controller-manager" --version \
    && reports "$K8S_VERSION" "$BIN_DIR/kubectl" version --client \
    && reports "$KWOK_VERSION" "$BIN_DIR/kwok" --version
}

# kwok's stock "fast" stages (the same set as its kustomize/stage/fast):
# nodes become Ready and pods Running at once. Cheap to (re)write.
write_stages() {
  local src="$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage" out="$BIN_DIR/kwok-stages.fast.yaml"
  [ -s "$out" ] && return 0
  [ -d "$src" ] || (cd /tmp && go mod download "sigs.k8s.io/kwok@$KWOK_VERSION" >>"$LOG" 2>&1) \
    || { log "could not download sigs.k8s.io/kwok@$KWOK_VERSION (see $LOG)"; return 1; }
  local f tmp="$out.tmp.$$"
  for f in "$src"/node/fast/*.yaml "$src"/node/heartbeat-with-lease/*.yaml "$src"/pod/fast/*.yaml; do
    case "$(basename "$f")" in kustomization.yaml) continue ;; esac
    cat "$f"; echo "---"
  done >"$tmp" && mv "$tmp" "$out"
}

if cache_ok && write_stages; then
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || { log "Go toolchain not found (need Go >= 1.26 for kwok $KWOK_VERSION)"; exit 1; }
mkdir -p "$CACHE_ROOT" "$GOMODCACHE" "$GOCACHE"
# One build at a time per cache: a concurrent caller waits, then finds it done.
exec 9>"$CACHE_ROOT/build.lock"
flock 9
if cache_ok && write_stages; then
  echo "$BIN_DIR"
  exit 0
fi
STAGE="$(mktemp -d "$CACHE_ROOT/stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
log "cache miss for $KEY: building (a cold build takes 7-40 minutes on 2 cores); log: $LOG"
: >"$LOG"

run() { "$@" >>"$LOG" 2>&1 || { log "failed: $* (see $LOG)"; tail -20 "$LOG" >&2; exit 1; }; }

# etcd: its go.mod has replace directives, so `go install mod@v` refuses it;
# a wrapper module that requires it builds it without them.
log "etcd $ETCD_VERSION"
mkdir -p "$STAGE/etcd" && cd "$STAGE/etcd"
run go mod init local/etcd-build
run go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
run go build -p 2 -trimpath -o "$STAGE/out/etcd" go.etcd.io/etcd/server/v3

# Kubernetes: the main module points every staging module at ./staging;
# replace each with its published v0.Y.Z, derived from the go.mod on the proxy.
log "kubernetes $K8S_VERSION"
mkdir -p "$STAGE/k8s" && cd "$STAGE/k8s"
run go mod init local/k8s-build
KMOD_JSON="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION")"
KGOMOD="$(printf '%s' "$KMOD_JSON" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[ -s "$KGOMOD" ] || { log "could not download go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
{
  echo "require k8s.io/kubernetes $K8S_VERSION"
  grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$KGOMOD" | awk -v v="$STAGING_VERSION" '{print "replace " $1 " => " $1 " " v}'
} >>go.mod
run go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION"
MAJOR="${K8S_VERSION#v}"; MAJOR="${MAJOR%%.*}"
MINOR="${K8S_VERSION#v*.}"; MINOR="${MINOR%%.*}"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS="$LDFLAGS -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for cmd in kube-apiserver kube-controller-manager kubectl; do
  log "  $cmd"
  run go build -p 2 -trimpath -ldflags "$LDFLAGS" -o "$STAGE/out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done

log "kwok $KWOK_VERSION"
run env GOBIN="$STAGE/out" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
rm -rf "$BIN_DIR" && mkdir -p "$(dirname "$BIN_DIR")"
mv "$STAGE/out" "$BIN_DIR"
cache_ok || { log "built binaries fail their --version check (see $LOG)"; exit 1; }
write_stages
log "done: $BIN_DIR"
echo "$BIN_DIR"
