"""PluginInstall / PluginUpdate objects -> mirror rows, and the comparison of rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from plugin_operator.domain.mirror_rows import (
    DISMISSED,
    PENDING,
    DesiredState,
    InstallRow,
    UnmappableObject,
    UpdateRow,
    desired_state,
    diff_rows,
    install_row,
    rows_from_objects,
    update_row,
)

WS = "3f2b8c1e-6a0d-4e8e-9a55-0b6f1d2c7e10"
UID_A = "11111111-1111-4111-8111-111111111111"
UID_B = "22222222-2222-4222-8222-222222222222"
SHA_1, SHA_2 = "1" * 40, "2" * 40


def plugin_install(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "review", "namespace": "team-a", "uid": UID_A},
        "spec": {"workspace": WS, "source": "github://acme/review#v1.2.0", **(spec or {})},
        "status": {"pluginName": "review", **(status or {})},
    }


def plugin_update(
    state: str | None = "Pending", uid: str = UID_A, created: str = "2026-01-02T03:04:05Z"
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": f"review-{SHA_2[:12]}", "uid": uid, "creationTimestamp": created},
        "spec": {
            "pluginInstall": "review",
            "workspace": WS,
            "plugin": "review",
            "trackedRef": "ref:main",
            "fromSHA": SHA_1,
            "toSHA": SHA_2,
        },
    }
    if state is not None:
        obj["status"] = {"state": state}
    return obj


class TestInstallRow:
    def test_maps_spec_and_status(self) -> None:
        row = install_row(
            plugin_install(
                spec={"track": "tag:latest"},
                status={"installedSHA": SHA_1, "installedAt": "2026-01-02T03:04:05Z"},
            )
        )
        assert row == InstallRow(WS, "review", "github://acme/review#v1.2.0", "tag:latest", SHA_1)
        assert row is not None and row.installed_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def test_prefers_the_normalized_source_and_tracked_ref_of_the_status(self) -> None:
        row = install_row(
            plugin_install(
                spec={"source": "review", "track": "main"},
                status={"sourceNormalized": "local://review", "trackedRef": "ref:main"},
            )
        )
        assert row is not None
        assert (row.source_raw, row.tracked_ref) == ("local://review", "ref:main")

    def test_without_a_track_the_tracked_ref_is_none(self) -> None:
        row = install_row(plugin_install())
        assert row is not None and row.tracked_ref == "none"

    @pytest.mark.parametrize("sha", [None, ""])
    def test_an_unknown_sha_is_null_never_empty(self, sha: str | None) -> None:
        row = install_row(plugin_install(status={"installedSHA": sha}))
        assert row is not None and row.installed_sha is None

    def test_no_row_before_the_plugin_name_is_known(self) -> None:
        obj = plugin_install()
        del obj["status"]
        assert install_row(obj) is None

    def test_the_loser_of_a_name_conflict_has_no_row(self) -> None:
        stalled = {"type": "Stalled", "status": "True", "reason": "Conflict", "message": "x"}
        assert install_row(plugin_install(status={"conditions": [stalled]})) is None

    def test_another_stall_keeps_the_row(self) -> None:
        stalled = {"type": "Stalled", "status": "True", "reason": "RefNotFound"}
        assert install_row(plugin_install(status={"conditions": [stalled]})) is not None


class TestUpdateRow:
    def test_maps_uid_spec_and_creation_time(self) -> None:
        row = update_row(plugin_update())
        assert row == UpdateRow(UID_A, WS, "review", "ref:main", SHA_1, SHA_2, PENDING)
        assert row.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("state", "status"),
        [
            (None, "pending"),
            ("Pending", "pending"),
            ("Applying", "pending"),
            ("Failed", "pending"),
            ("Applied", "applied"),
            ("Dismissed", "dismissed"),
            ("Superseded", "dismissed"),
        ],
    )
    def test_state_maps_to_queue_status(self, state: str | None, status: str) -> None:
        assert update_row(plugin_update(state)).status == status

    def test_an_unknown_state_is_refused(self) -> None:
        with pytest.raises(UnmappableObject, match="Exploded"):
            update_row(plugin_update("Exploded"))

    def test_missing_fields_are_named(self) -> None:
        obj = plugin_update()
        del obj["spec"]["fromSHA"]
        obj["metadata"]["uid"] = ""
        with pytest.raises(UnmappableObject, match=r"metadata.uid, spec.fromSHA missing"):
            update_row(obj)


class TestDesiredState:
    def test_workspace_ids_are_canonical_and_non_uuids_skipped(self) -> None:
        state = desired_state(
            [InstallRow(WS.upper(), "a", "local://a"), InstallRow("not-a-uuid", "b", "local://b")], []
        )
        assert list(state.installs) == [(WS, "a")]
        assert state.skipped == ("PluginInstall not-a-uuid/b: workspace is not a UUID",)

    def test_the_newest_pending_update_wins(self) -> None:
        old = update_row(plugin_update(uid=UID_A, created="2026-01-01T00:00:00Z"))
        new = update_row(plugin_update(uid=UID_B, created="2026-01-02T00:00:00Z"))
        state = desired_state([], [new, old])
        assert state.updates[UID_A].status == DISMISSED
        assert state.updates[UID_B].status == PENDING

    def test_unmappable_objects_become_notes(self) -> None:
        broken = plugin_update()
        del broken["spec"]["toSHA"]
        state = rows_from_objects([plugin_install()], [broken])
        assert list(state.installs) == [(WS, "review")]
        assert state.updates == {}
        assert state.skipped == (f"PluginUpdate review-{SHA_2[:12]}: spec.toSHA missing",)


class TestDiff:
    def test_equal_rows_have_no_difference_timestamps_aside(self) -> None:
        row = InstallRow(WS, "a", "local://a", installed_at=datetime(2020, 1, 1, tzinfo=UTC))
        update = UpdateRow(UID_A, WS, "a", "ref:main", SHA_1, SHA_2, created_at=datetime.now(UTC))
        desired = DesiredState({row.key: row}, {UID_A: update})
        held = [InstallRow(WS, "a", "local://a")], [UpdateRow(UID_A, WS, "a", "ref:main", SHA_1, SHA_2)]
        assert diff_rows(desired, *held) == []

    def test_lists_missing_stale_and_changed_rows(self) -> None:
        want = InstallRow(WS, "a", "local://a", installed_sha=None)
        desired = DesiredState(
            {want.key: want}, {UID_A: UpdateRow(UID_A, WS, "a", "ref:main", SHA_1, SHA_2, DISMISSED)}
        )
        held_installs = [InstallRow(WS, "a", "local://a", installed_sha=SHA_1), InstallRow(WS, "b", "local://b")]
        held_updates = [
            UpdateRow(UID_A, WS, "a", "ref:main", SHA_1, SHA_2, PENDING),
            UpdateRow(UID_B, WS, "a", "ref:main", SHA_1, SHA_2, PENDING),
        ]
        assert diff_rows(desired, held_installs, held_updates) == [
            f"workspace_plugins workspace={WS} plugin=a: installed_sha is '{SHA_1}' in the database, "
            "NULL in the cluster",
            f"workspace_plugins: stale row workspace={WS} plugin=b (no PluginInstall)",
            f"plugin_update_queue id={UID_A}: status is 'pending' in the database, 'dismissed' in the cluster",
            f"plugin_update_queue: stale row id={UID_B} workspace={WS} plugin=a (no PluginUpdate)",
        ]

    def test_lists_missing_rows(self) -> None:
        state = rows_from_objects([plugin_install()], [plugin_update()])
        assert diff_rows(state, [], []) == [
            f"workspace_plugins: missing row workspace={WS} plugin=review (the PluginInstall exists)",
            f"plugin_update_queue: missing row id={UID_A} workspace={WS} plugin=review (the PluginUpdate exists)",
        ]
