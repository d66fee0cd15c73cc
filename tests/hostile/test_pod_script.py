"""Hostile CLAUDE.md files and pod states for the in-pod script's `remove`
(design §4): uninstall removes exactly the well-formed blocks the operator
wrote for the plugin, leaves anything ambiguous untouched and says so in one
`claude-md: ...` line, and always completes (exit 0, plugin dir gone).

Run with the host's /bin/sh (and its awk) on a temporary configs dir;
tests/integration/test_pod_script.py runs a few with busybox when installed."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from plugin_operator.delivery.exec import POD_SCRIPT
from plugin_operator.delivery.plugin import parse_remove_report


def begin(name: str) -> bytes:
    return f"<!-- plugin-operator:begin {name} -->".encode()


def end(name: str) -> bytes:
    return f"<!-- plugin-operator:end {name} -->".encode()


def lines(*parts: bytes, eol: bytes = b"\n", final: bool = True) -> bytes:
    return eol.join(parts) + (eol if final else b"")


P = "review"
B, E = begin(P), end(P)
USER_TOP = b"# My workspace\nKeep this line.\n"
USER_END = b"Last user line.\n"
BLOCK = lines(B, b"Injected rule 1", b"Injected rule 2", E)


@dataclass(frozen=True)
class Case:
    id: str
    content: bytes
    expect: bytes | None  # None: the file stays byte for byte
    note: str | None  # a regex for the claude-md line; None: no line at all
    name: str = P


CASES = [
    Case("well-formed-block-in-the-middle", USER_TOP + BLOCK + USER_END, USER_TOP + USER_END, r"removed 1"),
    Case("block-at-the-very-start", BLOCK + USER_END, USER_END, r"removed 1"),
    Case("block-is-the-whole-file", BLOCK, b"", r"removed 1"),
    Case(
        "unterminated-begin",
        USER_TOP + lines(B, b"rule") + USER_END,
        None,
        r"ambiguous: the begin marker for review has no end marker, line 3",
    ),
    Case(
        "early-end-leaves-injected-text",
        USER_TOP + lines(B, b"rule", E, b"INJECTED after an early end", E) + USER_END,
        None,
        r"ambiguous: an end marker for review without a begin marker, line 7",
    ),
    Case(
        "nested-begin",
        lines(B, b"a", B, b"b", E, E),
        None,
        r"ambiguous: a second begin marker for review inside its block begun at line 1, line 3",
    ),
    Case("end-without-begin", USER_TOP + lines(E) + USER_END, None, r"ambiguous: an end marker .* line 3"),
    Case(
        "crlf-file",
        b"# Top\r\n" + lines(B, b"rule", E, eol=b"\r\n") + b"Tail\r\n",
        b"# Top\r\nTail\r\n",
        r"removed 1",
    ),
    Case(
        "cr-on-the-begin-line-only",
        b"# Top\n" + B + b"\r\nrule\n" + E + b"\nTail\n",
        b"# Top\nTail\n",
        r"removed 1",
    ),
    Case(
        "trailing-space-on-begin",
        USER_TOP + lines(B + b" ", b"rule", E) + USER_END,
        None,
        r"ambiguous: a marker for review that is not exactly .* line 3",
    ),
    Case(
        "trailing-space-on-end",
        USER_TOP + lines(B, b"rule", E + b" ") + USER_END,
        None,
        r"ambiguous: a marker-like line inside the block of review begun at line 3, line 5",
    ),
    Case(
        "leading-indent-on-begin",
        lines(b"  " + B, b"rule", E),
        None,
        r"ambiguous: a marker for review that is not exactly",
    ),
    Case("tab-inside-the-marker", lines(B.replace(b" review", b"\treview"), b"rule", E), None, r"ambiguous: "),
    Case("uppercase-marker-keyword", lines(B.upper(), b"rule", E), None, r"ambiguous: a marker for review"),
    Case("uppercase-plugin-name", lines(begin("REVIEW"), b"rule", end("REVIEW")), None, r"ambiguous: a marker"),
    Case("text-after-the-marker", lines(B + b" and more", b"rule", E), None, r"ambiguous: a marker for review"),
    Case(
        "other-plugins-block-only",
        USER_TOP + lines(begin("lint"), b"lint rule", end("lint")) + USER_END,
        None,
        None,
    ),
    Case(
        "ours-removed-theirs-kept",
        USER_TOP + BLOCK + lines(begin("lint"), b"lint rule", end("lint")) + USER_END,
        USER_TOP + lines(begin("lint"), b"lint rule", end("lint")) + USER_END,
        r"removed 1",
    ),
    Case(
        "name-prefix-is-not-ours",
        lines(begin("review-extra"), b"x", end("review-extra"), begin("reviewer"), b"y", end("reviewer")),
        None,
        None,
    ),
    Case(
        "dot-in-name-is-not-a-wildcard",
        lines(begin("a-b"), b"x", end("a-b"), begin("a.b"), b"y", end("a.b")),
        lines(begin("a-b"), b"x", end("a-b")),
        r"removed 1",
        name="a.b",
    ),
    Case(
        "other-plugins-marker-inside-our-block",
        lines(B, b"rule", begin("lint"), b"x", end("lint"), E),
        None,
        r"ambiguous: a marker-like line inside the block of review",
    ),
    Case(
        "unterminated-comment-marker-inside-block",
        lines(B, b"<!-- plugin-operator:end review", E),
        None,
        r"ambiguous: a marker-like line inside",
    ),
    Case(
        "user-prose-quoting-our-marker",
        lines(b"To add a block write `<!-- plugin-operator:begin review -->` on a line.", b"ok"),
        None,
        r"ambiguous: a marker for review that is not exactly",
    ),
    Case(
        "user-prose-mentioning-the-operator",
        lines(b"The plugin-operator manages plugins: begin here.", b"<!-- a comment -->"),
        None,
        None,
    ),
    Case("two-well-formed-blocks", lines(b"a", B, b"x", E, b"b", B, b"y", E, b"c"), lines(b"a", b"b", b"c"), r"2"),
    Case(
        "no-final-newline-user-line-last",
        USER_TOP + BLOCK + b"no newline at the end",
        USER_TOP + b"no newline at the end",
        r"removed 1",
    ),
    Case("no-final-newline-block-last", USER_TOP + lines(B, b"rule", E, final=False), USER_TOP, r"removed 1"),
    Case(
        "non-utf8-bytes-kept",
        b"caf\xe9 \xff\xfe\n" + BLOCK + b"\x80\x81 tail\n",
        b"caf\xe9 \xff\xfe\n\x80\x81 tail\n",
        r"removed 1",
    ),
    Case("nul-bytes-binary", USER_TOP + b"\x00\x01bin\n" + BLOCK, None, r"left-alone: CLAUDE.md holds NUL bytes"),
    Case(
        "awk-and-printf-specials-in-lines",
        lines(b"100% \\n %s %d \\", B, b"%n\\0 $(rm -rf /) `x`", E, b"'quote\" \\\\"),
        lines(b"100% \\n %s %d \\", b"'quote\" \\\\"),
        r"removed 1",
    ),
    Case("old-mac-cr-only-line-endings", b"# Top\r" + B + b"\rrule\r" + E + b"\r", None, r"ambiguous: "),
    Case("empty-file", b"", None, None),
    Case("blank-lines-around-block", b"\n\n" + BLOCK + b"\n\n", b"\n\n\n\n", r"removed 1"),
    Case(
        "marker-spelled-with-spaces-around-colon",
        lines(b"<!-- plugin-operator : begin review -->", b"rule", E),
        None,
        r"ambiguous: a marker for review",
    ),
    Case(
        "comment-closed-without-space",
        lines(b"<!-- plugin-operator:begin review-->", b"rule", b"<!-- plugin-operator:end review-->"),
        None,
        r"ambiguous: a marker for review",
    ),
]


def run(root: Path, name: str, *args: str, shell: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    argv = [*(shell or ["/bin/sh"]), "-c", POD_SCRIPT, "plugin-operator", "remove", str(root), name, "tok", *args]
    return subprocess.run(argv, capture_output=True, timeout=120, check=False)


def claude_lines(out: bytes) -> list[str]:
    return [line for line in out.decode("utf-8", "replace").splitlines() if line.startswith("claude-md:")]


def configs(tmp_path: Path, name: str = P) -> Path:
    root = tmp_path / "configs"
    (root / "plugins" / name).mkdir(parents=True)
    (root / "plugins" / name / "plugin.yaml").write_text(f"name: {name}\n")
    (root / "skills" / "s1").mkdir(parents=True)
    return root


def check_completed(root: Path, name: str, result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == 0, result.stderr
    assert not (root / "plugins" / name).exists()
    assert not (root / "skills" / "s1").exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".CLAUDE.md")] == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_claude_md_content(tmp_path: Path, case: Case) -> None:
    root = configs(tmp_path, case.name)
    doc = root / "CLAUDE.md"
    doc.write_bytes(case.content)
    result = run(root, case.name, "s1")
    check_completed(root, case.name, result)
    assert doc.read_bytes() == (case.content if case.expect is None else case.expect)
    said = claude_lines(result.stdout)
    if case.note is None:
        assert said == []
    else:
        assert len(said) == 1 and re.search(case.note, said[0]), said
        report = parse_remove_report(result.stdout)
        if case.expect is None:
            assert report.left_alone and report.removed_blocks == 0
        else:
            assert report.left_alone is None and report.removed_blocks >= 1


# -- pod states -----------------------------------------------------------------


def _expect(path: Path, content: bytes) -> Callable[[], None]:
    def check() -> None:
        assert path.read_bytes() == content

    return check


def _symlink(root: Path, tmp_path: Path) -> Callable[[], None]:
    target = tmp_path / "elsewhere.md"
    target.write_bytes(BLOCK)
    (root / "CLAUDE.md").symlink_to(target)

    def check() -> None:
        assert (root / "CLAUDE.md").is_symlink() and target.read_bytes() == BLOCK

    return check


def _dangling_symlink(root: Path, tmp_path: Path) -> Callable[[], None]:
    (root / "CLAUDE.md").symlink_to(tmp_path / "missing.md")

    def check() -> None:
        assert (root / "CLAUDE.md").is_symlink() and not (tmp_path / "missing.md").exists()

    return check


def _directory(root: Path, tmp_path: Path) -> Callable[[], None]:
    (root / "CLAUDE.md").mkdir()
    (root / "CLAUDE.md" / "inner.md").write_bytes(BLOCK)

    def check() -> None:
        assert (root / "CLAUDE.md" / "inner.md").read_bytes() == BLOCK

    return check


def _fifo(root: Path, tmp_path: Path) -> Callable[[], None]:
    os.mkfifo(root / "CLAUDE.md")

    def check() -> None:
        assert stat.S_ISFIFO((root / "CLAUDE.md").stat().st_mode)

    return check


def _planted_temp_symlink(root: Path, tmp_path: Path) -> Callable[[], None]:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (root / "CLAUDE.md").write_bytes(USER_TOP + BLOCK)
    (root / ".CLAUDE.md.plugin-operator@tok").symlink_to(victim)

    def check() -> None:
        assert victim.read_bytes() == b"precious\n"
        assert (root / "CLAUDE.md").read_bytes() == USER_TOP and not (root / "CLAUDE.md").is_symlink()

    return check


def _mode_kept(root: Path, tmp_path: Path) -> Callable[[], None]:
    doc = root / "CLAUDE.md"
    doc.write_bytes(USER_TOP + BLOCK)
    doc.chmod(0o600)

    def check() -> None:
        assert doc.read_bytes() == USER_TOP and stat.S_IMODE(doc.stat().st_mode) == 0o600

    return check


def _huge_but_allowed(root: Path, tmp_path: Path) -> Callable[[], None]:
    body = b"".join(b"user line %d with some text\n" % n for n in range(120_000))  # ~3.5 MB
    (root / "CLAUDE.md").write_bytes(body + BLOCK + body)
    return _expect(root / "CLAUDE.md", body + body)


def _too_large(root: Path, tmp_path: Path) -> Callable[[], None]:
    content = BLOCK + b"x" * (16 * 1024 * 1024 + 1)
    (root / "CLAUDE.md").write_bytes(content)
    return _expect(root / "CLAUDE.md", content)


def _one_huge_line(root: Path, tmp_path: Path) -> Callable[[], None]:
    line = b"y" * 2_000_000
    (root / "CLAUDE.md").write_bytes(line + b"\n" + BLOCK + line)
    return _expect(root / "CLAUDE.md", line + b"\n" + line)


def _no_plugins_dir(root: Path, tmp_path: Path) -> Callable[[], None]:
    shutil.rmtree(root / "plugins")
    (root / "CLAUDE.md").write_bytes(USER_TOP + BLOCK)
    return _expect(root / "CLAUDE.md", USER_TOP)


def _no_claude_md(root: Path, tmp_path: Path) -> Callable[[], None]:
    def check() -> None:
        assert not (root / "CLAUDE.md").exists()

    return check


def _stale_temp_files(root: Path, tmp_path: Path) -> Callable[[], None]:
    (root / "CLAUDE.md").write_bytes(USER_TOP + BLOCK)
    (root / ".CLAUDE.md.plugin-operator@0123456789ab").write_bytes(b"half-written by an interrupted run")
    return _expect(root / "CLAUDE.md", USER_TOP)


STATES: list[tuple[str, Callable[[Path, Path], Callable[[], None]], str | None]] = [
    ("claude-md-symlink-not-followed", _symlink, r"left-alone: CLAUDE.md is a symlink"),
    ("claude-md-dangling-symlink", _dangling_symlink, r"left-alone: CLAUDE.md is a symlink"),
    ("claude-md-is-a-directory", _directory, r"left-alone: CLAUDE.md is not a regular file"),
    ("claude-md-is-a-fifo", _fifo, r"left-alone: CLAUDE.md is not a regular file"),
    ("planted-symlink-at-the-temp-path", _planted_temp_symlink, r"removed 1"),
    ("file-mode-is-kept", _mode_kept, r"removed 1"),
    ("huge-file-within-the-cap", _huge_but_allowed, r"removed 1"),
    ("file-over-the-16MiB-cap", _too_large, r"left-alone: CLAUDE.md is larger than"),
    ("one-2MB-line-without-final-newline", _one_huge_line, r"removed 1"),
    ("plugins-dir-already-gone", _no_plugins_dir, r"removed 1"),
    ("no-claude-md-at-all", _no_claude_md, None),
    ("stale-temp-file-of-an-interrupted-run", _stale_temp_files, r"removed 1"),
]


@pytest.mark.parametrize(("setup", "note"), [(s, n) for _, s, n in STATES], ids=[i for i, _, _ in STATES])
def test_pod_state(tmp_path: Path, setup: Callable[[Path, Path], Callable[[], None]], note: str | None) -> None:
    root = configs(tmp_path)
    check = setup(root, tmp_path)
    result = run(root, P, "s1")
    if (root / "plugins").exists():
        check_completed(root, P, result)
    else:
        assert result.returncode == 0, result.stderr
    check()
    said = claude_lines(result.stdout)
    assert (said == []) if note is None else (len(said) == 1 and re.search(note, said[0])), said
