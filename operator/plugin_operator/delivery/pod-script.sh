# The one script the operator runs inside workspace pods:
#   sh -c "$SCRIPT" plugin-operator <op> <configs-dir> <plugin-name> [args...]
# It is fixed text; every value arrives as a positional argument (validated by
# the operator before), never spliced into the script. POSIX sh + coreutils or
# busybox only. Symlinks planted in the pod are never followed: each path the
# script writes or deletes is checked with -L first, renames move links
# themselves, and new directories are made fresh with mkdir.
set -eu
umask 022
op="$1"; root="$2"; name="$3"; shift 3

fail() { echo "plugin-operator: $*" >&2; exit 3; }

case "$root" in /*) ;; *) fail "configs dir must be absolute: $root" ;; esac
case "$name" in ""|.|..|*/*|-*) fail "bad plugin name" ;; esac
[ -L "$root" ] && fail "configs dir $root is a symlink"
plugins="$root/plugins"
target="$plugins/$name"
marker=".plugin-operator.json"

ensure_plugins_dir() {
  [ -d "$root" ] || mkdir -p "$root"
  [ -L "$plugins" ] && fail "$plugins is a symlink"
  # Someone else may make it at the same moment: check what is there after.
  [ -d "$plugins" ] || mkdir "$plugins" 2>/dev/null || true
  [ -L "$plugins" ] && fail "$plugins is a symlink"
  [ -d "$plugins" ] || fail "cannot create $plugins"
}

case "$op" in
read)
  # Prints the marker of the installed plugin, or nothing.
  [ -L "$plugins" ] && fail "$plugins is a symlink"
  [ -L "$target" ] && exit 0
  [ -f "$target/$marker" ] && [ ! -L "$target/$marker" ] && head -c 4096 "$target/$marker"
  exit 0
  ;;
install)
  # stdin: an uncompressed tar of the tree (marker included).
  token="$1"; files="$2"
  ensure_plugins_dir
  tmp="$plugins/.incoming@$name@$token"
  old="$plugins/.outgoing@$name@$token"
  rm -rf "$tmp" "$old"
  mkdir "$tmp"
  if ! tar -x -f - -C "$tmp" 2>"$tmp.err"; then
    msg="$(head -c 500 "$tmp.err")"; rm -rf "$tmp" "$tmp.err"; fail "unpacking failed: $msg"
  fi
  rm -f "$tmp.err"
  # Verify before swapping: every file arrived, nothing but files and dirs.
  got="$(find "$tmp" -type f | wc -l | tr -d ' ')"
  odd="$(find "$tmp" ! -type f ! -type d | head -n 1)"
  if [ "$got" != "$files" ] || [ -n "$odd" ] || [ ! -f "$tmp/$marker" ]; then
    rm -rf "$tmp"; fail "verification failed: $got of $files files${odd:+, unexpected $odd}"
  fi
  # Swap: the old tree (or a planted link) is moved aside, never followed.
  if [ -e "$target" ] || [ -L "$target" ]; then mv -f "$target" "$old"; fi
  mv "$tmp" "$target"
  rm -rf "$old"
  # Leftovers of an interrupted earlier run.
  for stale in "$plugins/.incoming@$name@"* "$plugins/.outgoing@$name@"*; do
    [ -e "$stale" ] || [ -L "$stale" ] || continue
    rm -rf "$stale"
  done
  ;;
remove)
  # args: token, then the skill dirs the plugin's manifest declares.
  token="$1"; shift
  if [ -d "$plugins" ] && [ ! -L "$plugins" ]; then
    if [ -e "$target" ] || [ -L "$target" ]; then
      mv -f "$target" "$plugins/.outgoing@$name@$token"
      rm -rf "$plugins/.outgoing@$name@$token"
    fi
    rm -rf "$plugins/.incoming@$name@"* "$plugins/.outgoing@$name@"*
  fi
  skills="$root/skills"
  if [ -d "$skills" ] && [ ! -L "$skills" ]; then
    for skill in "$@"; do
      case "$skill" in ""|.|..|*/*|-*) continue ;; esac
      if [ -e "$skills/$skill" ] || [ -L "$skills/$skill" ]; then rm -rf "$skills/$skill"; fi
    done
  fi
  # CLAUDE.md: drop only the lines between this plugin's own markers.
  doc="$root/CLAUDE.md"
  if [ -f "$doc" ] && [ ! -L "$doc" ]; then
    begin="<!-- plugin-operator:begin $name -->"
    end="<!-- plugin-operator:end $name -->"
    if grep -qxF "$begin" "$doc"; then
      awk -v b="$begin" -v e="$end" '
        $0 == b { skip = 1; next }
        skip && $0 == e { skip = 0; next }
        !skip { print }
      ' "$doc" >"$doc.plugin-operator-$token"
      mv -f "$doc.plugin-operator-$token" "$doc"
    fi
  fi
  ;;
*)
  fail "unknown operation $op"
  ;;
esac
