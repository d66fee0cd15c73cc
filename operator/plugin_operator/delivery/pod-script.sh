# The one script the operator runs inside workspace pods:
#   sh -c "$SCRIPT" plugin-operator <op> <configs-dir> <plugin-name> [args...]
# It is fixed text; every value arrives as a positional argument (validated by
# the operator before), never spliced into the script. POSIX sh + coreutils or
# busybox only. Symlinks planted in the pod are never followed: each path the
# script writes or deletes is checked with -L first, renames move links
# themselves, and new directories are made fresh with mkdir.
#
# Layout (design §4, §5): plugins/<name> is a symlink the operator owns,
# naming a sibling version directory plugins/..<name>@<token>/ (relative, no
# slash). A new version is unpacked into plugins/.incoming@<name>@<token>,
# verified, renamed to its version name, and published by renaming a new
# symlink over plugins/<name>: rename(2) of a symlink over a symlink is one
# atomic step, so a reader always sees the old tree or the new one, whole.
# A symlink at plugins/<name> is ours only when its text is exactly
# "..<name>@<token>" and that names a real directory; anything else there is
# planted and is replaced (the link itself), never followed.
set -eu
umask 022
op="$1"; root="$2"; name="$3"; shift 3

fail() { echo "plugin-operator: $*" >&2; exit 3; }

# Why a write failed, in words, from the tool's error text (GNU and busybox
# print strerror), else by probing the directory: "<what> in <dir> (ERRNO)".
explain() {
  err="$1"; dir="$2"; rc="${3:-1}"
  case "$rc" in
  153) echo "a file is too large for $dir: the container's file size limit (EFBIG, SIGXFSZ)"; return ;;
  137) echo "the command was killed (SIGKILL: out of memory, or the container is stopping)"; return ;;
  esac
  case "$err" in
  *"No space left"*) echo "no space left on device in $dir (ENOSPC)"; return ;;
  *"quota exceeded"*|*"Quota exceeded"*) echo "disk quota exceeded in $dir (EDQUOT)"; return ;;
  *"Read-only file system"*) echo "the file system of $dir is read-only (EROFS)"; return ;;
  *"Permission denied"*|*"Operation not permitted"*) echo "permission denied writing in $dir (EACCES)"; return ;;
  *"Not a directory"*) echo "a path under $dir is not a directory (ENOTDIR)"; return ;;
  *"File too large"*) echo "a file is too large for $dir (EFBIG)"; return ;;
  *"Input/output error"*) echo "input/output error in $dir (EIO)"; return ;;
  *"Too many open files"*) echo "too many open files in the container (EMFILE)"; return ;;
  *"No such file or directory"*) echo "a path under $dir vanished or does not exist (ENOENT)"; return ;;
  esac
  if [ ! -e "$dir" ]; then echo "$dir does not exist (ENOENT)"; return; fi
  if [ ! -d "$dir" ]; then echo "$dir is not a directory (ENOTDIR)"; return; fi
  probe="$dir/.probe@plugin-operator@$$"
  if perr="$( (: >"$probe") 2>&1)"; then
    rm -f "$probe" 2>/dev/null || true
    short="$(printf '%s' "$err" | tr -s '\n\t ' '   ' | head -c 300)"
    echo "${short:-an unknown error} in $dir"
    return
  fi
  rm -f "$probe" 2>/dev/null || true
  case "$perr" in
  *"No space left"*) echo "no space left on device in $dir (ENOSPC)" ;;
  *"Read-only file system"*) echo "the file system of $dir is read-only (EROFS)" ;;
  *"Permission denied"*|*"Operation not permitted"*) echo "permission denied writing in $dir (EACCES)" ;;
  *) echo "cannot write in $dir: $(printf '%s' "$perr" | tr -s '\n\t ' '   ' | head -c 200)" ;;
  esac
}

# do_or_fail <what> <dir> <command...>: run it; on failure say why.
do_or_fail() {
  what="$1"; dir="$2"; shift 2
  err="$("$@" 2>&1 >/dev/null)" && rc=0 || rc=$?
  if [ "$rc" != 0 ]; then fail "$what failed: $(explain "$err" "$dir" "$rc")"; fi
}

case "$root" in /*) ;; *) fail "configs dir must be absolute: $root" ;; esac
case "$name" in ""|.|..|*/*|-*|*@*) fail "bad plugin name" ;; esac
[ -L "$root" ] && fail "configs dir $root is a symlink"
plugins="$root/plugins"
target="$plugins/$name"
marker=".plugin-operator.json"

ensure_plugins_dir() {
  if [ ! -d "$root" ]; then do_or_fail "creating the configs dir" "$(dirname "$root")" mkdir -p "$root"; fi
  [ -L "$plugins" ] && fail "$plugins is a symlink"
  # Someone else may make it at the same moment: check what is there after.
  if [ ! -d "$plugins" ] && ! err="$(mkdir "$plugins" 2>&1)" && [ ! -d "$plugins" ]; then
    fail "creating $plugins failed: $(explain "$err" "$root")"
  fi
  [ -L "$plugins" ] && fail "$plugins is a symlink"
  [ -d "$plugins" ] || fail "cannot create $plugins"
}

# The version directory plugins/<name> points at, if the link is ours:
# prints its name (..<name>@<token>), else nothing.
our_version() {
  [ -L "$target" ] || return 0
  text="$(readlink "$target" 2>/dev/null)" || return 0
  case "$text" in "..$name@"*) ;; *) return 0 ;; esac
  case "$text" in */*) return 0 ;; esac
  tok="${text#"..$name@"}"
  case "$tok" in ""|*[!0-9a-zA-Z_-]*) return 0 ;; esac
  [ -d "$plugins/$text" ] && [ ! -L "$plugins/$text" ] && printf '%s' "$text"
  return 0
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
  [ -d "$plugins" ] || exit 0
  if [ -L "$target" ]; then
    version="$(our_version)"
    [ -n "$version" ] || exit 0
    dir="$plugins/$version"
  else
    dir="$target"  # a plain directory: the layout before the symlink
  fi
  [ -f "$dir/$marker" ] && [ ! -L "$dir/$marker" ] && head -c 4096 "$dir/$marker"
  exit 0
  ;;
install)
  # stdin: an uncompressed tar of the tree (marker included).
  token="$1"; files="$2"
  case "$token" in ""|*[!0-9a-zA-Z_-]*) fail "bad token" ;; esac
  ensure_plugins_dir
  tmp="$plugins/.incoming@$name@$token"
  version="..$name@$token"
  link="$plugins/.link@$name@$token"
  old="$plugins/.outgoing@$name@$token"
  rm -rf "$tmp" "$link" "$old"
  rm -rf "$plugins/$version"
  do_or_fail "creating a temporary directory" "$plugins" mkdir "$tmp"
  err="$(tar -x -f - -C "$tmp" 2>&1 >/dev/null)" && rc=0 || rc=$?
  if [ "$rc" != 0 ]; then
    why="$(explain "$err" "$plugins" "$rc")"; rm -rf "$tmp"; fail "unpacking failed: $why"
  fi
  # Verify before swapping: every file arrived, nothing but files and dirs.
  got="$(find "$tmp" -type f | wc -l | tr -d ' ')"
  odd="$(find "$tmp" ! -type f ! -type d | head -n 1)"
  if [ "$got" != "$files" ] || [ -n "$odd" ] || [ ! -f "$tmp/$marker" ]; then
    rm -rf "$tmp"; fail "verification failed: $got of $files files${odd:+, unexpected $odd}"
  fi
  do_or_fail "naming the new version" "$plugins" mv "$tmp" "$plugins/$version"
  if ! err="$(ln -s "$version" "$link" 2>&1)"; then
    why="$(explain "$err" "$plugins")"; rm -rf "$plugins/$version"; fail "linking the new version failed: $why"
  fi
  if [ -d "$target" ] && [ ! -L "$target" ]; then
    # A plain directory (the layout before the symlink): rename(2) cannot
    # put a link over a directory, so it steps aside for the one instant
    # between these two renames, once per pod and plugin.
    do_or_fail "moving the previous plain directory aside" "$plugins" mv -f "$target" "$old"
  fi
  # The swap: one rename of our link over plugins/<name> (ours or a planted
  # link or file: the link itself is replaced, never followed).
  if ! err="$(mv -f -T "$link" "$target" 2>&1)"; then
    why="$(explain "$err" "$plugins")"
    [ -d "$old" ] && [ ! -e "$target" ] && [ ! -L "$target" ] && mv "$old" "$target" 2>/dev/null
    rm -f "$link"; rm -rf "$plugins/$version"; fail "swapping the new version in failed: $why"
  fi
  # Leftovers: the previous version, and those of interrupted earlier runs.
  rm -rf "$old"
  for stale in "$plugins/..$name@"* "$plugins/.incoming@$name@"* "$plugins/.outgoing@$name@"* "$plugins/.link@$name@"*; do
    [ -e "$stale" ] || [ -L "$stale" ] || continue
    [ "$stale" = "$plugins/$version" ] && continue
    rm -rf "$stale" 2>/dev/null || true
  done
  ;;
remove)
  # args: token, then the skill dirs the plugin's manifest declares.
  token="$1"; shift
  case "$token" in ""|*[!0-9a-zA-Z_-]*) fail "bad token" ;; esac
  if [ -d "$plugins" ] && [ ! -L "$plugins" ]; then
    if [ -e "$target" ] || [ -L "$target" ]; then
      do_or_fail "removing $name" "$plugins" mv -f -T "$target" "$plugins/.outgoing@$name@$token"
      rm -rf "$plugins/.outgoing@$name@$token"
    fi
    rm -rf "$plugins/..$name@"* "$plugins/.incoming@$name@"* "$plugins/.outgoing@$name@"* "$plugins/.link@$name@"*
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
