"""Hostile plugin trees through the real operator (kubectl, kube-apiserver,
kwok pods, loopback git): each ends `Stalled` with a reason naming the
cause, nothing reaches any pod, and the operator does not fetch the same
broken commit again on its periodic reconciles (a negative cache per commit).

One operator serves the whole module; each case is its own repository,
workspace-free install name and test id."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev.cluster import LocalCluster
from tests.fixtures.cluster import scratch_namespace
from tests.fixtures.operator import Env, running_env

pytestmark = [pytest.mark.cluster, pytest.mark.git]

_RECONCILE = 2.0  # PLUGIN_RECONCILE_INTERVAL of the module's operator (seconds)

_META = "name: {name}\nversion: 1.0.0\n"

# id -> (files beside plugin.yaml, or a full tree when "plugin.yaml" is given; reasons accepted)
CASES: dict[str, tuple[dict[str, str | bytes], set[str]]] = {
    "dot-git-directory": ({".git/config": "[core]\n\tfsmonitor = touch /tmp/pwned\n"}, {"UnsafeTree"}),
    "dot-git-upper-case": ({".GIT/config": "[core]\n"}, {"UnsafeTree"}),
    "dot-git-nested": ({"hooks/.Git/HEAD": "ref: refs/heads/main\n"}, {"UnsafeTree"}),
    "dot-git-file": ({"sub/.git": "gitdir: /etc\n"}, {"UnsafeTree"}),
    "over-long-file-name": ({"x" * 300 + ".md": "long\n"}, {"TreeLimitExceeded"}),
    "nesting-deeper-than-the-limit": ({"/".join(["d"] * 80) + "/f.md": "deep\n"}, {"TreeLimitExceeded"}),
    "deeply-nested-plugin-yaml": (
        {"plugin.yaml": "name: {name}\nextra: " + "[" * 5000 + "]" * 5000 + "\n"},
        {"InvalidPlugin"},
    ),
    "deeply-nested-manifest-json": ({"manifest.json": "[" * 100000 + "]" * 100000}, {"InvalidPlugin"}),
    "duplicate-keys-in-plugin-yaml": (
        {"plugin.yaml": "name: {name}\nversion: 1.0.0\nversion: 2.0.0\n"},
        {"InvalidPlugin"},
    ),
    "claude-md-begin-marker-in-a-rule": (
        {"rules/r.md": "text\n<!-- plugin-operator:begin other -->\n"},
        {"UnsafeTree"},
    ),
    "claude-md-end-marker-with-crlf": (
        {"rules/r.md": "text\r\n<!-- plugin-operator:end {name} -->\r\n"},
        {"UnsafeTree"},
    ),
    "the-operators-marker-file-name": ({".plugin-operator.json": "{}"}, {"InvalidPlugin", "UnsafeTree"}),
}


@pytest.fixture(scope="module")
def env(kube: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("hostile-e2e")
    with (
        scratch_namespace(kube, "h") as namespace,
        running_env(kube, namespace, workdir, PLUGIN_RECONCILE_INTERVAL=f"{_RECONCILE}s") as env,
    ):
        env.workspace("hostile", replicas=1)
        yield env


def _fetches(env: Env) -> float:
    return env.operator.metrics().get("plugin_operator_git_fetches", 0.0)


def _tree(name: str, files: dict[str, str | bytes]) -> dict[str, str | bytes]:
    tree: dict[str, str | bytes] = {"plugin.yaml": _META.format(name=name), "rules/ok.md": "fine\n"}
    for path, content in files.items():
        tree[path] = content.replace("{name}", name) if isinstance(content, str) else content
    return tree


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_tree_ends_stalled_delivers_nothing_and_is_not_fetched_again(env: Env, case: str) -> None:
    files, reasons = CASES[case]
    name = f"h{uuid.uuid4().hex[:8]}"
    sha = env.git.create_repo("hostile", name, _tree(name, files))  # type: ignore[arg-type]
    env.install(name, "hostile", f"github://hostile/{name}#{sha}")

    def stalled() -> bool:
        status = env.get("pli", name).get("status") or {}
        return any(c["type"] == "Stalled" and c["status"] == "True" for c in status.get("conditions") or [])

    env.wait_for(f"{name} Stalled", stalled, timeout=60)
    status = env.get("pli", name)["status"]
    stalled_condition = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled_condition["reason"] in reasons, stalled_condition
    assert stalled_condition["message"], stalled_condition
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert not status.get("installedSHA") and not status.get("installedDigest")
    for pod_dir in env.pod_dirs("hostile"):
        assert not (Path(pod_dir) / "plugins" / name).exists()

    # Periodic reconciles of the stalled install must not fetch the commit again.
    before = _fetches(env)
    time.sleep(_RECONCILE * 1.5 + 0.5)  # at least one periodic reconcile
    assert _fetches(env) == before, "the broken commit was fetched again"
    assert env.get("pli", name)["status"]["conditions"] == status["conditions"] or stalled()
    env.k("delete", "pli", name, "--wait=true", "--timeout=30s")
