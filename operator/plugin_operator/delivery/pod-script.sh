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

# CLAUDE.md on uninstall (design §4). Removes exactly the well-formed blocks
# this operator wrote for the plugin: a line exactly
#   <!-- plugin-operator:begin NAME -->
# then lines none of which looks like a marker, then a line exactly
#   <!-- plugin-operator:end NAME -->
# (each marker line may end in one CR, for CRLF files). Anything ambiguous
# (begin without end, a begin inside a block, an end without a begin, a marker
# of this plugin that is not exact, any marker-like line inside a block) leaves
# the whole file untouched. Every other byte is kept as it was (CRs, a missing
# final newline). The outcome is one line on stdout, read by the operator:
#   claude-md: removed <n>
#   claude-md: ambiguous: <reason>, line <n>
#   claude-md: left-alone: <reason>
# Nothing is printed when the file is absent or never mentions plugin-operator.
# The name reaches awk through the environment (awk -v would interpret
# backslashes), the file through stdin (an operand with '=' is an assignment).
CLAUDE_MD_MAX_BYTES=16777216
CLAUDE_MD_AWK='
function marker_like(low) {
  return low ~ /<!--.*plugin-operator[ \t\r\v\f]*:[ \t\r\v\f]*(begin|end)/
}
# Whether a marker-like line (lower-cased) names this plugin anywhere.
function names_us(low,   rest, token) {
  rest = low
  while (match(rest, /plugin-operator[ \t\r\v\f]*:[ \t\r\v\f]*(begin|end)/)) {
    rest = substr(rest, RSTART + RLENGTH)
    token = rest
    sub(/^[ \t\r\v\f]+/, "", token)
    if (match(token, /[ \t\r\v\f]/)) token = substr(token, 1, RSTART - 1)
    sub(/-->$/, "", token)
    if (token == name) return 1
  }
  return 0
}
function emit(line) {
  if (held_set) printf "%s\n", held > out
  held = line; held_nr = NR; held_set = 1
}
function ambiguous(reason) {
  verdict = "ambiguous: " reason ", line " NR
  done = 1
  exit 0
}
BEGIN {
  name = ENVIRON["PO_NAME"]; out = ENVIRON["PO_OUT"]; nofinal = ENVIRON["PO_NOFINAL"]
  b = "<!-- plugin-operator:begin " name " -->"
  e = "<!-- plugin-operator:end " name " -->"
  inblock = 0; removed = 0; done = 0; held_set = 0
}
{
  line = $0
  core = line
  if (substr(core, length(core), 1) == "\r") core = substr(core, 1, length(core) - 1)
  if (core == b) {
    if (inblock) ambiguous("a second begin marker for " name " inside its block begun at line " start)
    inblock = 1; start = NR
    next
  }
  if (core == e) {
    if (!inblock) ambiguous("an end marker for " name " without a begin marker")
    inblock = 0; removed++
    next
  }
  low = tolower(line)
  if (marker_like(low)) {
    if (inblock) ambiguous("a marker-like line inside the block of " name " begun at line " start)
    if (names_us(low)) ambiguous("a marker for " name " that is not exactly the one the operator writes")
  }
  if (!inblock) emit(line)
}
END {
  if (done) { print verdict; exit 0 }
  if (inblock) { print "ambiguous: the begin marker for " name " has no end marker, line " start; exit 0 }
  if (held_set) {
    if (held_nr == NR && nofinal == "1") printf "%s", held > out
    else printf "%s\n", held > out
  }
  if (removed) close(out)
  print "removed " removed
}
'

claude_md() {
  doc="$root/CLAUDE.md"
  if [ -L "$doc" ]; then echo "claude-md: left-alone: CLAUDE.md is a symlink (not followed)"; return 0; fi
  [ -e "$doc" ] || return 0
  if [ ! -f "$doc" ]; then echo "claude-md: left-alone: CLAUDE.md is not a regular file"; return 0; fi
  # Leftovers of an interrupted earlier run (our own names only).
  for stale in "$root/.CLAUDE.md.plugin-operator@"*; do
    [ -f "$stale" ] || [ -L "$stale" ] || continue
    rm -f "$stale" 2>/dev/null || true
  done
  if grep -qi 'plugin-operator' "$doc" 2>/dev/null; then :; else
    [ "$?" = 1 ] && return 0
    echo "claude-md: left-alone: CLAUDE.md could not be read"; return 0
  fi
  size="$(wc -c <"$doc" | tr -d ' ')"
  if [ "$size" -gt "$CLAUDE_MD_MAX_BYTES" ]; then
    echo "claude-md: left-alone: CLAUDE.md is larger than $CLAUDE_MD_MAX_BYTES bytes ($size)"; return 0
  fi
  if [ "$(tr -d '\000' <"$doc" | wc -c | tr -d ' ')" != "$size" ]; then
    echo "claude-md: left-alone: CLAUDE.md holds NUL bytes (binary content)"; return 0
  fi
  nofinal=0
  [ "$size" -gt 0 ] && [ "$(tail -c 1 "$doc" | wc -l | tr -d ' ')" = 0 ] && nofinal=1
  tmp="$root/.CLAUDE.md.plugin-operator@$token"
  rm -f "$tmp" 2>/dev/null || true
  if [ -e "$tmp" ] || [ -L "$tmp" ] || ! (set -C; : >"$tmp") 2>/dev/null; then
    echo "claude-md: left-alone: cannot create a temporary file next to CLAUDE.md"; return 0
  fi
  if ! verdict="$(PO_NAME="$name" PO_OUT="$tmp" PO_NOFINAL="$nofinal" LC_ALL=C awk "$CLAUDE_MD_AWK" <"$doc")"; then
    rm -f "$tmp" 2>/dev/null || true; echo "claude-md: left-alone: CLAUDE.md could not be read"; return 0
  fi
  case "$verdict" in
  "removed 0") rm -f "$tmp" 2>/dev/null || true ;;
  removed\ *)
    # Keep the file's mode where chmod can copy it; the swap is a rename.
    mode="$(ls -ln "$doc" 2>/dev/null | cut -c2-10)" || mode=""
    [ -n "$mode" ] && { chmod "$(perm_octal "$mode")" "$tmp" 2>/dev/null || true; }
    if [ -f "$doc" ] && [ ! -L "$doc" ] && mv -f "$tmp" "$doc"; then
      echo "claude-md: $verdict"
    else
      rm -f "$tmp" 2>/dev/null || true; echo "claude-md: left-alone: CLAUDE.md could not be replaced"
    fi
    ;;
  *)
    rm -f "$tmp" 2>/dev/null || true; printf 'claude-md: %s\n' "$verdict"
    ;;
  esac
  return 0
}

# rwxr-xr-x -> 755 (setuid/sticky bits are not carried over).
perm_octal() {
  p="$1"; o=""
  for i in 0 3 6; do
    d=0
    case "$(echo "$p" | cut -c$((i + 1)))" in r) d=$((d + 4)) ;; esac
    case "$(echo "$p" | cut -c$((i + 2)))" in w) d=$((d + 2)) ;; esac
    case "$(echo "$p" | cut -c$((i + 3)))" in x|s|t) d=$((d + 1)) ;; esac
    o="$o$d"
  done
  echo "$o"
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
  claude_md
  ;;
*)
  fail "unknown operation $op"
  ;;
esac
