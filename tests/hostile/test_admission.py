"""Hostile PluginInstall specs applied with kubectl to the local apiserver:
each is refused at `kubectl apply` by the CRD schema (OpenAPI patterns,
enums, lengths, CEL), with a message naming the field (design §8).

CRD `pattern`s and CEL `matches` anchor `$` at the very end of the value, so
a trailing newline never slips through (unlike Python's re.match with `$`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localdev.cluster import LocalCluster

pytestmark = pytest.mark.cluster

API_VERSION = "plugins.workspace.dev/v1alpha1"
LABEL_KEY_RULE = "every key must be a label key"


def labels(mapping: dict[str, Any]) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": mapping}}


def expression(**fields: Any) -> dict[str, Any]:
    return {"podSelector": {"matchExpressions": [fields]}}


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # trailing newlines and other control characters, field by field
    ("workspace-trailing-newline", {"workspace": "ws-1\n"}, "spec.workspace", "should match"),
    ("workspace-trailing-cr", {"workspace": "ws-1\r"}, "spec.workspace", "should match"),
    ("source-trailing-newline", {"source": "local://code-review\n"}, "spec.source", "should match"),
    ("source-ref-trailing-cr", {"source": "github://o/r#main\r"}, "spec.source", "should match"),
    ("source-nul-byte", {"source": "github://o/r#ma\u0000in"}, "spec.source", "should match"),
    ("track-trailing-newline", {"source": "github://o/r#main", "track": "main\n"}, "spec.track", "should match"),
    ("track-semver-newline", {"source": "github://o/r#v1", "track": "semver:^1.2\n"}, "spec.track", "should match"),
    ("container-trailing-newline", {"container": "agent\n"}, "spec.container", "should match"),
    ("restart-trailing-newline", {"restart": "Rollout\n"}, "spec.restart", "Unsupported value"),
    ("update-policy-trailing-newline", {"updatePolicy": "Manual\n"}, "spec.updatePolicy", "Unsupported value"),
    ("label-value-trailing-newline", labels({"app": "web\n"}), "spec.podSelector.matchLabels", "should match"),
    ("label-key-trailing-newline", labels({"app\n": "web"}), "spec.podSelector.matchLabels", LABEL_KEY_RULE),
    (
        "expression-key-trailing-newline",
        expression(key="app\n", operator="Exists"),
        "spec.podSelector.matchExpressions[0].key",
        "should match",
    ),
    (
        "expression-value-trailing-newline",
        expression(key="app", operator="In", values=["web\n"]),
        "spec.podSelector.matchExpressions[0].values[0]",
        "should match",
    ),
    # label keys and values
    ("label-key-leading-dash", labels({"-app": "web"}), "spec.podSelector.matchLabels", LABEL_KEY_RULE),
    ("label-key-name-64-chars", labels({"a" * 64: "web"}), "spec.podSelector.matchLabels", LABEL_KEY_RULE),
    (
        "label-key-prefix-254-chars",
        labels({"a" * 254 + "/app": "web"}),
        "spec.podSelector.matchLabels",
        LABEL_KEY_RULE,
    ),
    ("label-key-two-slashes", labels({"acme.io/a/b": "web"}), "spec.podSelector.matchLabels", LABEL_KEY_RULE),
    ("label-key-uppercase-prefix", labels({"Acme.io/app": "web"}), "spec.podSelector.matchLabels", LABEL_KEY_RULE),
    ("label-value-64-chars", labels({"app": "w" * 64}), "spec.podSelector.matchLabels", "Too long"),
    ("label-value-leading-dash", labels({"app": "-web"}), "spec.podSelector.matchLabels", "should match"),
    ("label-value-with-space", labels({"app": "web app"}), "spec.podSelector.matchLabels", "should match"),
    ("label-value-with-equals", labels({"app": "web=x"}), "spec.podSelector.matchLabels", "should match"),
    ("label-value-unicode", labels({"app": "wéb"}), "spec.podSelector.matchLabels", "should match"),
    (
        "label-33-entries",
        labels({f"k{n}": "v" for n in range(33)}),
        "spec.podSelector.matchLabels",
        "must have at most 32 items",
    ),
    # expressions
    (
        "expression-unknown-operator",
        expression(key="app", operator="Gt", values=["1"]),
        "spec.podSelector.matchExpressions[0].operator",
        "Unsupported value",
    ),
    (
        "expression-in-without-values",
        expression(key="app", operator="In"),
        "spec.podSelector.matchExpressions[0]",
        "In and NotIn need values",
    ),
    (
        "expression-exists-with-values",
        expression(key="app", operator="Exists", values=["x"]),
        "spec.podSelector.matchExpressions[0]",
        "Exists and DoesNotExist take none",
    ),
    (
        "expression-key-with-space",
        expression(key="my app", operator="Exists"),
        "spec.podSelector.matchExpressions[0].key",
        "should match",
    ),
    (
        "expression-value-shell",
        expression(key="app", operator="In", values=["$(id)"]),
        "spec.podSelector.matchExpressions[0].values[0]",
        "should match",
    ),
    ("empty-selector", {"podSelector": {}}, "spec.podSelector", "must not be empty"),
    # lengths and shapes
    ("workspace-64-chars", {"workspace": "w" * 64}, "spec.workspace", "Too long"),
    ("workspace-leading-dash", {"workspace": "-ws"}, "spec.workspace", "should match"),
    ("workspace-unicode", {"workspace": "w\u015b"}, "spec.workspace", "should match"),
    ("container-uppercase", {"container": "Agent"}, "spec.container", "should match"),
    ("container-64-chars", {"container": "a" * 64}, "spec.container", "Too long"),
    ("container-underscore", {"container": "my_agent"}, "spec.container", "should match"),
    ("source-513-chars", {"source": "github://o/r#" + "a" * 500}, "spec.source", "Too long"),
    ("source-with-space", {"source": "local://code review"}, "spec.source", "should match"),
    ("source-ssh-scheme", {"source": "ssh://git@host/o/r"}, "spec.source", "unknown scheme"),
    ("track-257-chars", {"source": "github://o/r#main", "track": "a" * 257}, "spec.track", "Too long"),
    ("track-sha-uppercase", {"source": "github://o/r#main", "track": "sha:" + "A" * 40}, "spec.track", "40-character"),
    ("track-on-local-source", {"track": "ref:main"}, "spec.track", "only github:// sources"),
    ("restart-lowercase", {"restart": "rollout"}, "spec.restart", "Unsupported value"),
    ("update-policy-bogus", {"updatePolicy": "Always"}, "spec.updatePolicy", "Unsupported value"),
    ("suspend-a-string", {"suspend": "true"}, "spec.suspend", "must be of type boolean"),
    ("source-missing", {"source": None}, "spec.source", "Required value"),
    ("workspace-a-number", {"workspace": 42}, "spec.workspace", "must be of type string"),
]


@pytest.mark.parametrize(("spec", "field", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_at_apply(kube: LocalCluster, namespace: str, spec: dict[str, Any], field: str, fragment: str) -> None:
    body = {key: value for key, value in {"workspace": "ws-1", "source": "local://code-review", **spec}.items()}
    body = {key: value for key, value in body.items() if value is not None}
    obj = {"apiVersion": API_VERSION, "kind": "PluginInstall", "metadata": {"name": "hostile"}, "spec": body}
    done = kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False)
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert field in done.stderr and fragment in done.stderr, done.stderr
    listed = kube.kubectl("get", "plugininstalls", "-n", namespace, "-o", "name").stdout
    assert listed.strip() == ""
