"""The PluginInstall status computation (domain.install_status): pure and fast."""

from __future__ import annotations

from plugin_operator.domain import conditions as cond
from plugin_operator.domain.install_status import PodResult, condition_events, pod_entries, ready, whole_status
from plugin_operator.domain.marker import Marker
from plugin_operator.domain.objects import InstallStatus, InstallView, UpdateState, UpdateView
from plugin_operator.domain.pods import PodPlan

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"
A = "a" * 40


def _status(**raw: object) -> InstallStatus:
    return InstallStatus.parse(raw)


def _by_type(status: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["type"]: c for c in status["conditions"]}  # type: ignore[attr-defined, index]


def test_whole_status_carries_every_known_field_and_clears_with_none() -> None:
    prev = _status(pluginName="p", installedSHA=A, pendingUpdate="p-x", unknownField="dropped")
    status = whole_status(prev, 3, [], now=T0, pendingUpdate=None)
    assert status["pluginName"] == "p" and status["installedSHA"] == A
    assert status["installedShortSHA"] == A[:12]
    assert status["pendingUpdate"] is None and "unknownField" not in status
    assert status["observedGeneration"] == 3 and "pods" in status and status["pods"] is None


def test_conditions_of_other_types_are_carried_and_ready_is_summarised() -> None:
    prev = whole_status(_status(), 1, [cond.Condition("UpToDate", True, "UpToDate", "fine")], now=T0)
    installed = cond.Condition("Installed", True, "Installed", "p@a in 1 pod(s)")
    status = whole_status(_status(**prev), 2, [installed], now=T1)
    by_type = _by_type(status)
    assert set(by_type) == {"Installed", "UpToDate", "Ready"}
    assert by_type["UpToDate"]["lastTransitionTime"] == T0  # unchanged: its time stays
    assert by_type["Ready"]["status"] == "True" and by_type["Ready"]["lastTransitionTime"] == T1
    assert all(c["observedGeneration"] == 2 for c in by_type.values())


def test_ready_stalled_wins_then_installed_then_progressing() -> None:
    installed = cond.Condition("Installed", True, "Installed", "ok")
    stalled = cond.Condition("Stalled", True, "InvalidSource", "bad")
    assert ready([installed, stalled]) == cond.Condition("Ready", False, "InvalidSource", "bad")
    assert ready([installed, cond.Condition("Stalled", False, "Installed")]).status is True
    assert ready([]) == cond.Condition("Ready", False, "Progressing", "")
    failed = cond.Condition("Installed", False, "DeliveryFailed", "1 of 2")
    assert ready([failed]) == cond.Condition("Ready", False, "DeliveryFailed", "1 of 2")


def test_events_for_changes_of_problem_conditions_only() -> None:
    before = [cond.Condition("Stalled", True, "InvalidSource", "bad")]
    written = cond.merge(
        None,
        [
            cond.Condition("Stalled", False, "Installed", ""),
            cond.Condition("Installed", True, "Installed", "ok"),
            cond.Condition("UpToDate", False, "DriftDetected", "moved"),
        ],
        generation=1,
        now=T0,
    )
    assert condition_events(before, written) == [("Normal", "Installed", ""), ("Normal", "Installed", "ok")]
    # Stalled False without having been True: no Event; unchanged: no Event
    quiet = cond.merge(None, [cond.Condition("Stalled", False, "Installed", "")], generation=1, now=T0)
    assert condition_events([], quiet) == []
    stalled = cond.merge(None, before, generation=1, now=T0)
    assert condition_events(before, stalled) == []
    assert condition_events([], stalled) == [("Warning", "InvalidSource", "bad")]


def _plan(name: str, **kw: object) -> PodPlan:
    args: dict[str, object] = {"container": "agent", "configs_dir": "/configs", "ready": True, "external": False}
    args.update(kw)
    return PodPlan(name, **args)  # type: ignore[arg-type]


def test_pod_entries_keep_the_time_of_an_unchanged_pod_and_say_why_others_wait() -> None:
    marker = Marker(source="local://p", sha=None, digest="d" * 64)
    prev = _status(pods=[{"name": "a", "sha": None, "digest": "d" * 64, "time": T0}])
    results = [PodResult(_plan("a"), marker), PodResult(_plan("b"), marker, delivered=True)]
    skipped = [_plan("c", external=True), _plan("d", ready=False), _plan("e", problem="no container")]
    entries = {e["name"]: e for e in pod_entries(results, skipped, prev, T1)}
    assert list(entries) == ["a", "b", "c", "d", "e"]
    assert entries["a"]["time"] == T0 and entries["b"]["time"] == T1
    assert entries["c"]["message"].startswith("external runtime")
    assert entries["d"]["message"] == "not running yet" and entries["e"]["message"] == "no container"
    assert entries["d"]["sha"] is None and entries["d"]["time"] is None
    failed = pod_entries([PodResult(_plan("a"), error="exec refused")], [], prev, T1)
    assert failed == [{"name": "a", "sha": None, "digest": None, "time": None, "message": "exec refused"}]


def test_views_parse_once_and_keep_the_body() -> None:
    body = {
        "metadata": {"name": "p", "namespace": "ns", "generation": 4, "deletionTimestamp": T0},
        "spec": {"workspace": "ws"},
        "status": {"installedSkills": ["s", 3], "conditions": [{"type": "Ready", "status": "True"}]},
    }
    view = InstallView.parse(body)
    assert view.meta.generation == 4 and view.meta.deleting and view.workspace == "ws"
    assert view.status.installed_skills == ("s",) and view.status.condition("Ready") is not None
    assert view.body is body
    update = UpdateView.parse({"metadata": {"name": "u"}, "spec": {"toSHA": A, "approved": True}})
    assert update.state == UpdateState.Pending and not update.status.written and update.spec.approved
    assert update.with_status({"state": "Applied"}).state == "Applied"
    assert UpdateState.Rejected in {"Rejected": 1} and UpdateState("Failed").value == "Failed"
