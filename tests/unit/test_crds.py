"""Offline checks of the CRD manifests: structural, documented, and the
contract's names. The behaviour of the validation rules is pinned down against
a real apiserver in tests/integration/test_smoke.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from plugin_operator.domain.errors import InvalidSpec
from plugin_operator.domain.source import parse_source
from plugin_operator.domain.track import parse_track
from tests.integration.test_smoke import INVALID_PLUGIN_INSTALLS, VALID_PLUGIN_INSTALLS

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
CRD_FILES = sorted(CRD_DIR.glob("*.yaml"))


def _schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from _fields(child, f"{path}.{name}")
    if "items" in node:
        yield from _fields(node["items"], f"{path}[]")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _fields(extra, f"{path}{{}}")


def test_the_crd_directory_holds_exactly_the_two_crds() -> None:
    kinds = {yaml.safe_load(path.read_text())["spec"]["names"]["kind"] for path in CRD_FILES}
    assert kinds == {"PluginInstall", "PluginUpdate"}


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_is_namespaced_v1alpha1_with_status_subresource(path: Path) -> None:
    crd = yaml.safe_load(path.read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["spec"]["group"] == "plugins.workspace.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert "plugins" in crd["spec"]["names"]["categories"]


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_every_field_is_typed_and_described(path: Path) -> None:
    for field, node in _fields(_schema(path), ""):
        if field == ".metadata":
            continue
        assert node.get("type"), f"{path.name}: {field} has no type (not structural)"
        assert node.get("description") or field.endswith("{}") or field.endswith("[]"), (
            f"{path.name}: {field} has no description"
        )


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_every_cel_rule_has_a_message_naming_a_spec_field(path: Path) -> None:
    def rules(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield from node.get("x-kubernetes-validations", [])
        for _, child in _fields(node, ""):
            yield from child.get("x-kubernetes-validations", [])

    found = list(rules(_schema(path)))
    assert found
    for rule in found:
        assert re.search(r"\bspec\.\w+", rule["message"]), rule


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_cel_checked_strings_are_bounded(path: Path) -> None:
    # CEL cost estimation multiplies by the maximum string length.
    schema = _schema(path)
    for field, node in _fields(schema, ""):
        if node.get("type") == "string" and node.get("x-kubernetes-validations"):
            rules = " ".join(r["rule"] for r in node["x-kubernetes-validations"])
            if "matches(" in rules:
                assert node.get("maxLength"), f"{field} runs regexes without maxLength"


def test_plugininstall_printer_columns_follow_the_contract() -> None:
    crd = yaml.safe_load((CRD_DIR / "plugininstalls.yaml").read_text())
    columns = [
        c["name"].upper() for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert columns == ["WORKSPACE", "PLUGIN", "SOURCE", "TRACK", "INSTALLED", "READY", "UPDATE", "AGE"]


def test_pluginupdate_printer_columns_follow_the_contract() -> None:
    crd = yaml.safe_load((CRD_DIR / "pluginupdates.yaml").read_text())
    columns = [
        c["name"].upper() for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert columns == ["WORKSPACE", "PLUGIN", "FROM", "TO", "STATE", "REWRITE", "AGE"]


# -- the CRD and the domain grammar agree (the corpus is the one the
# integration tests check against a real apiserver) ---------------------------------------------


GRAMMAR_FIELDS = ("spec.source", "spec.track")


@pytest.mark.parametrize("spec", VALID_PLUGIN_INSTALLS)
def test_what_the_crd_accepts_the_domain_parses(spec: dict[str, Any]) -> None:
    source = parse_source(spec["source"], allow_unpinned=True)
    parse_track(spec.get("track"), source)


@pytest.mark.parametrize(
    ("spec", "field", "fragment"), [p for p in INVALID_PLUGIN_INSTALLS if p.values[1] in GRAMMAR_FIELDS]
)
def test_what_the_crd_refuses_the_domain_refuses(spec: dict[str, Any], field: str, fragment: str) -> None:
    full = {"source": "local://code-review", **spec}
    with pytest.raises(InvalidSpec):
        parse_track(full.get("track"), parse_source(full["source"], allow_unpinned=True))


# -- every string of the PluginInstall spec is checked whole ---------------------------------


def _spec_strings() -> Iterator[tuple[str, dict[str, Any]]]:
    spec = _schema(CRD_DIR / "plugininstalls.yaml")["properties"]["spec"]
    for field, node in _fields(spec, "spec"):
        if node.get("type") == "string":
            yield field, node


@pytest.mark.parametrize(("field", "node"), list(_spec_strings()), ids=[f for f, _ in _spec_strings()])
def test_every_spec_string_is_bounded_and_refuses_a_trailing_newline(field: str, node: dict[str, Any]) -> None:
    assert node.get("maxLength") or node.get("enum"), f"{field} has no maxLength"
    if node.get("enum"):
        assert all("\n" not in value for value in node["enum"])
        return
    assert node.get("pattern"), f"{field} has no pattern"
    # The apiserver anchors `$` at the very end of the value (Go regexp, ECMA-262);
    # Python's `$` also matches before a final newline, so compare with \Z.
    whole = re.compile(node["pattern"].replace("$", r"\Z"))
    for value in ("web\n", "web\r", "web\n\n", "\nweb", "w\x00b"):
        assert not whole.search(value), f"{field} accepts {value!r}"


def test_matchlabels_keys_are_checked_by_a_cel_rule() -> None:
    spec = _schema(CRD_DIR / "plugininstalls.yaml")["properties"]["spec"]
    labels = spec["properties"]["podSelector"]["properties"]["matchLabels"]
    (rule,) = labels["x-kubernetes-validations"]
    assert "self.all(k" in rule["rule"] and "label key" in rule["message"]
