"""Smoke tests of the real local control plane and of the CRDs' contract
(design section 2), driven with kubectl the way users drive it: what
`kubectl apply` accepts and refuses, and with which message; that kwok pods
run and accept exec; that the garbage collector follows ownerReferences."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from localdev.cluster import LocalCluster

pytestmark = pytest.mark.cluster

API_VERSION = "plugins.workspace.dev/v1alpha1"
CRDS = ("plugininstalls.plugins.workspace.dev", "pluginupdates.plugins.workspace.dev")
SHA_A = "a" * 40
SHA_B = "b" * 40
SHA_C = "0123456789abcdef0123456789abcdef01234567"


def plugin_install(name: str, **spec: Any) -> dict[str, Any]:
    body = {"workspace": "ws-1", "source": "local://code-review", **spec}
    return {"apiVersion": API_VERSION, "kind": "PluginInstall", "metadata": {"name": name}, "spec": body}


def plugin_update(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "pluginInstall": "review",
        "workspace": "ws-1",
        "plugin": "review",
        "trackedRef": "ref:main",
        "fromSHA": SHA_A,
        "toSHA": SHA_B,
        **spec,
    }
    return {"apiVersion": API_VERSION, "kind": "PluginUpdate", "metadata": {"name": name}, "spec": body}


def apply(kube: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    manifest = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def refused(kube: LocalCluster, namespace: str, *argv: str, input: str | None = None) -> str:  # noqa: A002
    """Run kubectl expecting the apiserver to refuse; return its message."""
    done = kube.kubectl(*argv, "-n", namespace, input=input, check=False)
    assert done.returncode != 0, f"kubectl {' '.join(argv)} was accepted: {done.stdout}"
    return done.stderr


def merge_patch(kind: str, name: str, patch: dict[str, Any]) -> tuple[str, ...]:
    return ("patch", kind, name, "--type=merge", "-p", json.dumps(patch))


# -- the CRDs are served and documented ------------------------------------------


def explain(kube: LocalCluster, field: str, timeout: float = 60) -> str:
    # The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    deadline = time.monotonic() + timeout
    while True:
        done = kube.kubectl("explain", field, check=False)
        if done.returncode == 0:
            return done.stdout
        assert time.monotonic() < deadline, f"kubectl explain {field}: {done.stderr}"
        time.sleep(1)


def test_crds_are_established(kube: LocalCluster) -> None:
    for crd in CRDS:
        status = kube.kubectl(
            "get", "crd", crd, "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        ).stdout
        assert status == "True", crd


def test_kubectl_explain_documents_the_track_grammar(kube: LocalCluster) -> None:
    out = explain(kube, "plugininstall.spec.track")
    for form in ("none", "ref:<name>", "tag:<tag>", "tag:latest", "semver:<range>", "sha:<40 lowercase hex>"):
        assert form in out, form


def test_kubectl_explain_documents_the_source_grammar_and_approval(kube: LocalCluster) -> None:
    source = explain(kube, "plugininstall.spec.source")
    assert "local://<name>" in source and "github://<owner>/<repo>[/<sub/dir>][#<ref>]" in source
    approved = explain(kube, "pluginupdate.spec.approved")
    assert "cannot be set back" in approved


# -- PluginInstall: accepted --------------------------------------------------


VALID_PLUGIN_INSTALLS = [
    {"source": "local://code-review"},
    {"source": "code-review", "track": "none"},
    {"source": "github://acme/plugins/review#v1.2.0", "track": "ref:v1.2.0"},
    {"source": "github://acme/lint-rules#main", "track": "main"},
    {"source": "github://Acme/Lint-Rules.git#feature=x", "track": "ref:feature=x"},
    {"source": "github://acme/lint-rules", "track": "tag:latest"},
    {"source": "github://acme/lint-rules", "track": "semver:^1.2"},
    {"source": "github://acme/lint-rules", "track": "semver:>=1.0.0 <2.0.0"},
    {"source": "github://acme/lint-rules#v1.0.0", "track": "tag:v1.0.0"},
    {"source": f"github://acme/lint-rules#{SHA_C}", "track": f"sha:{SHA_C}"},
    {
        "source": "github://Acme-Org/mono.repo/plugins/lint_rules#release/1.x",
        "track": "ref:release/1.x",
        "workspace": "3f2c9a1e-8d4b-4c2a-9f1e-2b7d5c6a8e90",
        "container": "workspace",
        "podSelector": {
            "matchLabels": {"app": "agent"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
        },
        "restart": "None",
        "updatePolicy": "Automatic",
        "suspend": True,
    },
]


def test_valid_plugininstalls_are_accepted_with_defaults(kube: LocalCluster, namespace: str) -> None:
    apply(kube, namespace, *(plugin_install(f"pli-{i}", **spec) for i, spec in enumerate(VALID_PLUGIN_INSTALLS)))

    stored = json.loads(kube.kubectl("get", "pli", "-n", namespace, "-o", "json").stdout)["items"]
    by_name = {item["metadata"]["name"]: item["spec"] for item in stored}
    assert len(by_name) == len(VALID_PLUGIN_INSTALLS)
    assert by_name["pli-0"] == {
        "workspace": "ws-1",
        "source": "local://code-review",
        "restart": "Rollout",
        "updatePolicy": "Manual",
        "suspend": False,
    }
    assert by_name["pli-10"]["restart"] == "None"
    # The category and the printer columns serve `kubectl get plugins`.
    table = kube.kubectl("get", "plugins", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "WORKSPACE", "PLUGIN", "SOURCE", "TRACK", "INSTALLED", "READY", "UPDATE", "AGE"]


# -- PluginInstall: refused, naming the field ---------------------------------------


INVALID_PLUGIN_INSTALLS = [
    pytest.param({"source": "ftp://x"}, "spec.source", "unknown scheme", id="unknown-source-scheme"),
    pytest.param({"track": "banana:1"}, "spec.track", "unknown kind", id="unknown-track-kind"),
    pytest.param({"workspace": None}, "spec.workspace", "Required value", id="missing-workspace"),
    pytest.param(
        {"source": "github://o/r#--upload-pack=x"},
        "spec.source",
        "must not start with '-'",
        id="option-like-source-ref",
    ),
    pytest.param(
        {"source": "github://o/r", "track": "--upload-pack=x"},
        "spec.track",
        "must not start with '-'",
        id="option-like-track",
    ),
    pytest.param(
        {"source": "github://o/r", "track": "ref:-x"}, "spec.track", "must not start with '-'", id="option-like-ref"
    ),
    pytest.param({"source": "github://-o/r"}, "spec.source", "starts with '-' or '.'", id="option-like-owner"),
    pytest.param({"source": "github://o/../r"}, "spec.source", "'..' or '.git' path segment", id="dotdot-segment"),
    pytest.param({"source": "github://o/r/.git/x"}, "spec.source", "'..' or '.git' path segment", id="dot-git-segment"),
    pytest.param({"source": "github://o/r#"}, "spec.source", "1 to 255", id="empty-ref"),
    pytest.param({"source": "github://o/r#a..b"}, "spec.source", "not a valid git ref name", id="dotdot-ref"),
    pytest.param({"source": "github://o/r#a b"}, "spec.source", "no whitespace", id="whitespace-ref"),
    pytest.param({"source": "github://o"}, "spec.source", "github://<owner>/<repo>", id="github-without-repo"),
    pytest.param({"source": "github://o/_private"}, "spec.source", "plugin name", id="bad-plugin-name"),
    pytest.param({"source": "github://o/.github"}, "spec.source", "starts with '-' or '.'", id="dot-repo"),
    pytest.param({"source": "local://Bad"}, "spec.source", "local plugin", id="uppercase-local-name"),
    pytest.param({"source": "local://.."}, "spec.source", "local plugin", id="dotdot-local-name"),
    pytest.param({"source": "github://o/r", "track": "sha:ABC"}, "spec.track", "40-character", id="short-sha"),
    pytest.param({"source": "github://o/r", "track": "semver:"}, "spec.track", "version range", id="empty-semver"),
    pytest.param({"source": "github://o/r", "track": "main branch"}, "spec.track", "no whitespace", id="space"),
    pytest.param({"track": "ref:main"}, "spec.track", "only github:// sources", id="local-source-tracking"),
    pytest.param({"workspace": "has space"}, "spec.workspace", "should match", id="workspace-not-label"),
    pytest.param({"workspace": "w" * 64}, "spec.workspace", "63", id="workspace-too-long"),
    pytest.param({"container": "Bad_Name"}, "spec.container", "should match", id="container-not-dns-label"),
    pytest.param({"restart": "Sometimes"}, "spec.restart", "Unsupported value", id="restart-enum"),
    pytest.param({"updatePolicy": "Always"}, "spec.updatePolicy", "Unsupported value", id="update-policy-enum"),
    pytest.param({"podSelector": {}}, "spec.podSelector", "must not be empty", id="empty-pod-selector"),
]


@pytest.mark.parametrize(("spec", "field", "fragment"), INVALID_PLUGIN_INSTALLS)
def test_malformed_plugininstall_is_refused_naming_the_field(
    kube: LocalCluster, namespace: str, spec: dict[str, Any], field: str, fragment: str
) -> None:
    obj = plugin_install("bad", **spec)
    obj["spec"] = {key: value for key, value in obj["spec"].items() if value is not None}

    message = refused(kube, namespace, "apply", "-f", "-", input=json.dumps(obj))

    assert field in message, message
    assert fragment in message, message


# -- PluginUpdate: identity immutable, decision one-way --------------------------------


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"toSHA": SHA_C}, "spec.toSHA is immutable"),
        ({"fromSHA": SHA_C}, "spec.fromSHA is immutable"),
        ({"fromSHA": None}, "spec.fromSHA is immutable"),
        ({"pluginInstall": "other"}, "spec.pluginInstall is immutable"),
        ({"trackedRef": "ref:dev"}, "spec.trackedRef is immutable"),
    ],
    ids=["toSHA", "fromSHA", "fromSHA-removed", "pluginInstall", "trackedRef"],
)
def test_pluginupdate_identity_is_immutable(
    kube: LocalCluster, namespace: str, patch: dict[str, Any], message: str
) -> None:
    apply(kube, namespace, plugin_update("review-bbbbbbbbbbbb"))

    stderr = refused(kube, namespace, *merge_patch("pluginupdate", "review-bbbbbbbbbbbb", {"spec": patch}))

    assert message in stderr, stderr


def test_pluginupdate_cannot_be_both_approved_and_dismissed(kube: LocalCluster, namespace: str) -> None:
    apply(kube, namespace, plugin_update("review-bbbbbbbbbbbb"))
    both = {"spec": {"approved": True, "dismissed": True}}

    stderr = refused(kube, namespace, *merge_patch("plu", "review-bbbbbbbbbbbb", both))

    assert "spec.approved and spec.dismissed cannot both be true" in stderr, stderr


def test_approved_pluginupdate_cannot_be_dismissed_or_unapproved(kube: LocalCluster, namespace: str) -> None:
    apply(kube, namespace, plugin_update("review-bbbbbbbbbbbb"))
    kube.kubectl("-n", namespace, *merge_patch("pluginupdate", "review-bbbbbbbbbbbb", {"spec": {"approved": True}}))

    back = refused(kube, namespace, *merge_patch("plu", "review-bbbbbbbbbbbb", {"spec": {"approved": False}}))
    removed = refused(kube, namespace, *merge_patch("plu", "review-bbbbbbbbbbbb", {"spec": {"approved": None}}))
    dismissed = refused(kube, namespace, *merge_patch("plu", "review-bbbbbbbbbbbb", {"spec": {"dismissed": True}}))

    assert "spec.approved cannot be set back to false" in back, back
    assert "spec.approved cannot be set back to false" in removed, removed
    assert "spec.approved and spec.dismissed cannot both be true" in dismissed, dismissed


def test_dismissed_pluginupdate_cannot_be_undismissed(kube: LocalCluster, namespace: str) -> None:
    apply(kube, namespace, plugin_update("review-bbbbbbbbbbbb"))
    kube.kubectl("-n", namespace, *merge_patch("plu", "review-bbbbbbbbbbbb", {"spec": {"dismissed": True}}))

    stderr = refused(kube, namespace, *merge_patch("plu", "review-bbbbbbbbbbbb", {"spec": {"dismissed": False}}))

    assert "spec.dismissed cannot be set back to false" in stderr, stderr


def test_malformed_pluginupdate_is_refused_naming_the_field(kube: LocalCluster, namespace: str) -> None:
    bad = plugin_update("review-x", toSHA="HEAD")

    stderr = refused(kube, namespace, "apply", "-f", "-", input=json.dumps(bad))

    assert "spec.toSHA" in stderr, stderr


# -- the control plane: kwok pods, exec, garbage collection ---------------------------


def wait_for_default_service_account(kube: LocalCluster, namespace: str, timeout: float = 60) -> None:
    # Pods are refused until the controller manager has created it.
    deadline = time.monotonic() + timeout
    while kube.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {namespace} after {timeout}s"
        time.sleep(0.5)


def test_kwok_pod_runs_and_exec_reaches_its_configs_dir(kube: LocalCluster, namespace: str, tmp_path: Path) -> None:
    configs = tmp_path / "ws-0" / "configs"
    configs.mkdir(parents=True)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ws-0", "labels": {"plugins.workspace.dev/workspace": "ws-1"}},
        "spec": {
            "nodeName": kube.node_name,
            "containers": [
                {"name": "workspace", "image": "agent:latest", "env": [{"name": "CONFIGS_DIR", "value": str(configs)}]}
            ],
        },
    }
    wait_for_default_service_account(kube, namespace)
    apply(kube, namespace, pod)
    kube.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/ws-0", "--timeout=60s", timeout=90)

    # A fixed script with the directory as a positional argument, as the
    # operator does it: no shell string built from data.
    kube.kubectl(
        "exec", "-n", namespace, "ws-0", "-c", "workspace", "--", "/bin/sh", "-c", 'echo hi > "$0/probe"', str(configs)
    )

    assert (configs / "probe").read_text() == "hi\n"


def test_garbage_collector_deletes_a_pluginupdate_whose_plugininstall_is_gone(
    kube: LocalCluster, namespace: str
) -> None:
    apply(kube, namespace, plugin_install("review", source="github://acme/review#main"))
    uid = kube.kubectl("get", "pli", "review", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    child = plugin_update("review-bbbbbbbbbbbb")
    child["metadata"]["ownerReferences"] = [
        {"apiVersion": API_VERSION, "kind": "PluginInstall", "name": "review", "uid": uid, "controller": True}
    ]
    apply(kube, namespace, child)

    kube.kubectl("delete", "pli", "review", "-n", namespace)

    # The garbage collector notices new CRDs through periodic discovery
    # (about every 30s), so allow for one or two rounds.
    kube.kubectl(
        "wait", "-n", namespace, "--for=delete", "pluginupdate/review-bbbbbbbbbbbb", "--timeout=120s", timeout=150
    )


# -- deploy/: accepted by the apiserver; RBAC grants what the operator needs, no more ---


REPO_ROOT = Path(__file__).resolve().parents[2]
OPERATOR_SA = "system:serviceaccount:plugin-operator-system:plugin-operator"


def kustomize(kube: LocalCluster, directory: str) -> list[dict[str, Any]]:
    built = kube.kubectl("kustomize", str(REPO_ROOT / directory)).stdout
    return [doc for doc in yaml.safe_load_all(built) if doc]


def can_i(kube: LocalCluster, verb: str, resource: str, namespace: str | None = None) -> bool:
    """`resource` may name a subresource: `pods/exec`."""
    kind, _, sub = resource.partition("/")
    argv = ["auth", "can-i", verb, kind, "--as", OPERATOR_SA]
    argv += ["-n", namespace] if namespace else ["--all-namespaces"]
    argv += [f"--subresource={sub}"] if sub else []
    return kube.kubectl(*argv, check=False).stdout.strip() == "yes"


def test_deploy_base_is_accepted_and_rbac_is_least_privilege(kube: LocalCluster, namespace: str) -> None:
    objects = kustomize(kube, "deploy/base")
    kinds = {obj["kind"] for obj in objects}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"} <= kinds
    # The namespace and RBAC for real (nothing runs without the Deployment).
    rbac_kinds = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    rbac = [obj for obj in objects if obj["kind"] in rbac_kinds]
    kube.kubectl(
        "apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac})
    )
    # The rest as a server-side dry run, against the real schemas and admission
    # (the ClusterKopfPeering object needs its CRD Established first).
    checked = [obj for obj in objects if obj not in rbac and obj["kind"] != "ClusterKopfPeering"]
    kube.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": checked}),
    )

    assert can_i(kube, "watch", "plugininstalls.plugins.workspace.dev")
    assert can_i(kube, "patch", "plugininstalls.plugins.workspace.dev", namespace)
    assert can_i(kube, "patch", "plugininstalls.plugins.workspace.dev/status", namespace)
    assert can_i(kube, "create", "pluginupdates.plugins.workspace.dev", namespace)
    assert can_i(kube, "list", "pods")
    assert can_i(kube, "patch", "deployments.apps", namespace)
    assert can_i(kube, "create", "events", namespace)
    assert not can_i(kube, "create", "plugininstalls.plugins.workspace.dev", namespace)
    assert not can_i(kube, "get", "secrets", namespace)
    assert not can_i(kube, "delete", "pods", namespace)
    assert not can_i(kube, "delete", "pluginupdates.plugins.workspace.dev", namespace)
    assert not can_i(kube, "update", "plugininstalls.plugins.workspace.dev", namespace)
    assert not can_i(kube, "get", "statefulsets.apps", namespace)
    assert can_i(kube, "patch", "statefulsets.apps", namespace)
    # Leader election: get/create/update on leases in its own namespace only.
    for verb in ("get", "create", "update"):
        assert can_i(kube, verb, "leases.coordination.k8s.io", "plugin-operator-system")
        assert not can_i(kube, verb, "leases.coordination.k8s.io", namespace)
    assert not can_i(kube, "delete", "leases.coordination.k8s.io", "plugin-operator-system")
    assert not can_i(kube, "list", "leases.coordination.k8s.io", "plugin-operator-system")
    # pods/exec only where deploy/workspace-namespace grants it.
    assert not can_i(kube, "create", "pods/exec", namespace)

    grant = kustomize(kube, "deploy/workspace-namespace")
    for obj in grant:
        obj["metadata"]["namespace"] = namespace
    kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": grant}))

    assert can_i(kube, "create", "pods/exec", namespace)
    assert not can_i(kube, "create", "pods/exec", "default")


# -- status: what the operator writes is kept whole and shown by kubectl get ------------------


NOW = "2026-01-02T03:04:05Z"


def ready(status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason, "message": message, "lastTransitionTime": NOW}


def test_plugininstall_status_is_kept_whole_and_printed(kube: LocalCluster, namespace: str) -> None:
    apply(kube, namespace, plugin_install("review", source="github://acme/review#main"))
    status = {
        "observedGeneration": 1,
        "pluginName": "review",
        "sourceNormalized": "github://acme/review#main",
        "trackedRef": "ref:main",
        "installedSHA": SHA_C,
        "installedShortSHA": SHA_C[:12],
        "installedDigest": "d" * 64,
        "installedAt": NOW,
        "resolvedRef": "refs/heads/main",
        "upstreamSHA": SHA_B,
        "upstreamDigest": None,
        "lastResolvedAt": NOW,
        "pendingUpdate": "review-bbbbbbbbbbbb",
        "dismissedSHAs": [SHA_A],
        "observedResolve": None,
        "message": "installed in 1 pod",
        "pods": [{"name": "ws-0", "sha": SHA_C, "digest": "d" * 64, "time": NOW, "message": None}],
        "conditions": [ready("True", "Installed", "installed in 1 pod")],
    }
    kube.kubectl(
        "patch",
        "pli",
        "review",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )

    stored = json.loads(kube.kubectl("get", "pli", "review", "-n", namespace, "-o", "json").stdout)["status"]
    assert stored == {key: value for key, value in status.items() if value is not None} | {
        "pods": [{"name": "ws-0", "sha": SHA_C, "digest": "d" * 64, "time": NOW}]
    }
    row = kube.kubectl("get", "pli", "review", "-n", namespace, "--no-headers").stdout.split()
    assert row[:8] == [
        "review",
        "ws-1",
        "review",
        "github://acme/review#main",
        "ref:main",
        SHA_C[:12],
        "True",
        "review-bbbbbbbbbbbb",
    ]


def test_pluginupdate_status_is_kept_whole_and_printed(kube: LocalCluster, namespace: str) -> None:
    apply(kube, namespace, plugin_update("review-bbbbbbbbbbbb"))
    status = {
        "observedGeneration": 1,
        "state": "Pending",
        "fromShort": SHA_A[:12],
        "toShort": SHA_B[:12],
        "message": "waiting for approval",
        "attempts": 0,
        "conditions": [ready("False", "AwaitingApproval")],
    }
    kube.kubectl(
        "patch", "plu", "review-bbbbbbbbbbbb", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip

    stored = json.loads(kube.kubectl("get", "plu", "review-bbbbbbbbbbbb", "-n", namespace, "-o", "json").stdout)
    assert stored["status"] == status
    header, row = kube.kubectl("get", "plu", "-n", namespace).stdout.splitlines()
    assert header.split() == ["NAME", "WORKSPACE", "PLUGIN", "FROM", "TO", "STATE", "REWRITE", "AGE"]
    assert row.split()[:6] == ["review-bbbbbbbbbbbb", "ws-1", "review", SHA_A[:12], SHA_B[:12], "Pending"]

    bad = {"status": {"state": "Done"}}
    stderr = refused(
        kube,
        namespace,
        "patch",
        "plu",
        "review-bbbbbbbbbbbb",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(bad),
    )
    assert "status.state" in stderr, stderr
