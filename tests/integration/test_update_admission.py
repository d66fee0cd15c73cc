"""The PluginUpdate admission policy (deploy/base/pluginupdate-admission.yaml)
on the real local apiserver, driven with kubectl and `--as` impersonation:
a user whom RBAC lets create and patch PluginUpdates may still not create
one, nor change its proposal or status; approving and dismissing stay open;
the operator's ServiceAccount may create.

The policy is bound here to the test's namespace only (a copy of the
shipped binding with a namespaceSelector), so the operators other tests run
as the cluster admin are not affected."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from localdev.cluster import LocalCluster
from tests.integration.test_smoke import SHA_A, SHA_B, plugin_update

pytestmark = pytest.mark.cluster

POLICY_FILE = Path(__file__).resolve().parents[2] / "deploy" / "base" / "pluginupdate-admission.yaml"
OPERATOR = "system:serviceaccount:plugin-operator-system:plugin-operator"
USER = "alice@example.com"
SHA_C = "c" * 40


@dataclass
class Admission:
    kube: LocalCluster
    namespace: str

    def run(self, *argv: str, who: str | None = None, input: str | None = None) -> Any:  # noqa: A002
        identity = (f"--as={who}",) if who else ()
        return self.kube.kubectl(*identity, *argv, "-n", self.namespace, input=input, check=False)

    def create(self, obj: dict[str, Any], who: str | None, *extra: str) -> Any:
        return self.run("create", *extra, "-f", "-", who=who, input=json.dumps(obj))

    def patch(self, name: str, patch: dict[str, Any], who: str | None, *extra: str) -> Any:
        return self.run("patch", "pluginupdate", name, "--type=merge", "-p", json.dumps(patch), *extra, who=who)


def shipped_policy(suffix: str, namespace: str) -> list[dict[str, Any]]:
    """The shipped policy and binding, renamed and bound to one namespace."""
    policy, binding = yaml.safe_load_all(POLICY_FILE.read_text())
    assert policy["kind"] == "ValidatingAdmissionPolicy" and binding["kind"] == "ValidatingAdmissionPolicyBinding"
    assert binding["spec"]["validationActions"] == ["Deny"]
    policy["metadata"]["name"] += f"-{suffix}"
    binding["metadata"]["name"] += f"-{suffix}"
    binding["spec"]["policyName"] = policy["metadata"]["name"]
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    return [policy, binding]


def rbac(namespace: str) -> list[dict[str, Any]]:
    """RBAC lets both the user and the operator's ServiceAccount create,
    patch and update PluginUpdates and their status: only the policy stands
    in the user's way."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "pluginupdate-writer", "namespace": namespace},
        "rules": [
            {
                "apiGroups": ["plugins.workspace.dev"],
                "resources": ["pluginupdates", "pluginupdates/status"],
                "verbs": ["get", "list", "watch", "create", "patch", "update"],
            }
        ],
    }
    _, _, sa_namespace, sa_name = OPERATOR.split(":")
    subjects = [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": USER},
        {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace},
    ]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "pluginupdate-writer", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pluginupdate-writer"},
        "subjects": subjects,
    }
    return [role, binding]


def install_policy(kube: LocalCluster, namespace: str) -> Iterator[Admission]:
    """Apply RBAC and the namespaced copy of the policy, wait until the
    apiserver enforces it (probed with server-side dry runs), yield, remove."""
    objects = shipped_policy(namespace, namespace)
    kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac(namespace)}))
    admission = Admission(kube, namespace)
    try:
        deadline = time.monotonic() + 60
        probe = plugin_update("probe")
        while True:
            done = admission.create(probe, USER, "--dry-run=server")
            if done.returncode != 0 and "ValidatingAdmissionPolicy" in done.stderr:
                break
            assert time.monotonic() < deadline, f"the policy is not enforced after 60s: {done.stderr or done.stdout}"
            time.sleep(0.5)
        yield admission
    finally:
        for obj in objects:
            kube.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found", check=False)


@pytest.fixture
def admission(kube: LocalCluster, namespace: str) -> Iterator[Admission]:
    yield from install_policy(kube, namespace)


def denied(done: Any) -> str:
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert "ValidatingAdmissionPolicy" in done.stderr and "denied" in done.stderr, done.stderr
    return str(done.stderr)


def refused(done: Any) -> str:
    """Refused by the policy, or first by the CRD's immutability rules (CRD
    validation runs before validating admission)."""
    assert done.returncode != 0, f"accepted: {done.stdout}"
    assert "ValidatingAdmissionPolicy" in done.stderr or "is immutable" in done.stderr, done.stderr
    return str(done.stderr)


def allowed(done: Any) -> None:
    assert done.returncode == 0, done.stderr


def test_only_the_operator_creates_people_approve_or_dismiss(admission: Admission) -> None:
    # RBAC allows it; the policy does not.
    message = denied(admission.create(plugin_update("by-hand", approved=True), USER))
    assert "only its ServiceAccount may create" in message
    assert admission.run("get", "pluginupdate", "by-hand").returncode != 0

    # The operator's ServiceAccount creates (and writes status).
    allowed(admission.create(plugin_update("proposed"), OPERATOR))
    allowed(admission.create(plugin_update("proposed-2", toSHA=SHA_C), OPERATOR))
    allowed(admission.patch("proposed", {"status": {"state": "Pending"}}, OPERATOR, "--subresource=status"))

    # The user may not change the proposal, nor status.
    refused(admission.patch("proposed", {"spec": {"toSHA": SHA_C}}, USER))
    refused(admission.patch("proposed", {"spec": {"fromSHA": SHA_C}}, USER))
    refused(admission.patch("proposed", {"spec": {"rewrite": "TagMoved"}}, USER))
    refused(admission.patch("proposed", {"spec": {"trackedRef": "ref:evil", "approved": True}}, USER))
    message = denied(admission.patch("proposed", {"status": {"state": "Applied"}}, USER, "--subresource=status"))
    assert "status of a PluginUpdate" in message
    spec = json.loads(admission.run("get", "pluginupdate", "proposed", "-o", "json").stdout)["spec"]
    assert spec["toSHA"] == SHA_B and spec["fromSHA"] == SHA_A and not spec.get("approved")

    # ... but may approve one and dismiss another, and annotate (retry).
    allowed(admission.patch("proposed", {"spec": {"approved": True}}, USER))
    allowed(admission.patch("proposed-2", {"spec": {"dismissed": True}}, USER))
    allowed(admission.run("annotate", "pluginupdate", "proposed", "plugins.workspace.dev/retry=1", who=USER))
    spec = json.loads(admission.run("get", "pluginupdate", "proposed", "-o", "json").stdout)["spec"]
    assert spec["approved"] is True and spec["toSHA"] == SHA_B


def test_a_service_account_of_the_same_name_elsewhere_may_not_create(admission: Admission) -> None:
    # RBAC lets it create: only the policy stands in its way.
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "impostor", "namespace": admission.namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pluginupdate-writer"},
        "subjects": [{"kind": "ServiceAccount", "name": "plugin-operator", "namespace": admission.namespace}],
    }
    admission.kube.kubectl("apply", "-f", "-", input=json.dumps(binding))
    impostor = f"system:serviceaccount:{admission.namespace}:plugin-operator"
    assert "only its ServiceAccount may create" in denied(admission.create(plugin_update("impostor"), impostor))


def test_the_shipped_policy_covers_the_status_subresource_and_every_spec_field() -> None:
    crd = yaml.safe_load((POLICY_FILE.parents[2] / "crds" / "pluginupdates.yaml").read_text())
    spec_fields = set(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])
    policy, _ = yaml.safe_load_all(POLICY_FILE.read_text())
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert set(rule["resources"]) == {"pluginupdates", "pluginupdates/status"}
    assert set(rule["operations"]) == {"CREATE", "UPDATE"}
    unchanged = next(v for v in policy["spec"]["variables"] if v["name"] == "identityUnchanged")["expression"]
    for field in spec_fields - {"approved", "dismissed"}:
        assert f"object.spec.{field} == oldObject.spec.{field}" in unchanged, field
