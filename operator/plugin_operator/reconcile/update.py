"""The PluginUpdate lifecycle (design §2): approve, dismiss, apply, retry,
reject.

Approval (`spec.approved: true`, or `updatePolicy: Automatic` at proposal)
installs exactly `toSHA` through the install reconcile, and only for an
update this operator proposed for that install (domain.drift.verify_proposed):
anything else (a hand-written object, one squatting on a proposal's name)
ends `Rejected` before anything is fetched.
"""

from __future__ import annotations

from plugin_operator import GROUP
from plugin_operator.domain import conditions as cond
from plugin_operator.domain import drift
from plugin_operator.domain.objects import InstallView, UpdateState, UpdateView
from plugin_operator.kube.api import INSTALLS, UPDATES
from plugin_operator.reconcile.deps import Deps, Outcome, now_text
from plugin_operator.reconcile.install import reconcile_install
from plugin_operator.reconcile.status import (
    install_status,
    write_install_status,
    write_update_fields,
    write_update_status,
)

# The install's fields naming its one pending update, cleared together.
NO_PENDING: dict[str, str | None] = {"pendingUpdate": None, "pendingUpdateSHA": None, "pendingUpdateRef": None}


async def reject(deps: Deps, update: UpdateView, message: str) -> None:
    """Rejected: a terminal state for an update this operator did not propose.
    Status only (its spec is never touched), an Event, nothing installed."""
    await write_update_status(
        deps, update, UpdateState.Rejected, message, reason="NotProposed", extra={"rejectedBecause": message}
    )
    deps.emitter(update.body)("Warning", "NotProposed", f"rejected, nothing installed: {message}")


_TERMINAL_SAID = {
    UpdateState.Dismissed: "it was dismissed",
    UpdateState.Rejected: "it was rejected",
}


async def reconcile_update(deps: Deps, namespace: str, name: str) -> Outcome:
    obj = await deps.kube.get(UPDATES, namespace, name)
    if obj is None:
        return Outcome(message="gone")
    update = UpdateView.parse(obj)
    spec, state = update.spec, update.state
    emit = deps.emitter(update.body)

    if state.terminal:
        if (spec.approved or spec.dismissed) and state != UpdateState.Applied:
            status = update.status
            said = _TERMINAL_SAID.get(state) or f"superseded by {status.superseded_by or 'a newer update'}"
            message = f"{'approving' if spec.approved else 'dismissing'} changes nothing: {said}"
            if state == UpdateState.Rejected:
                rejected = status.rejected_because or status.message or ""
                message = f"{message}: {rejected}" if rejected else message
            if status.message != message:
                rejected_state = state == UpdateState.Rejected
                extra = {"rejectedBecause": status.rejected_because} if rejected_state else None
                reason = "NotProposed" if rejected_state else None
                await write_update_status(deps, update, state, message, extra=extra, reason=reason)
                emit("Normal", "Ignored", message)
        return Outcome(message=state.value)

    install_name = spec.plugin_install
    # Only what this operator proposed for that install counts (checked
    # before anything is fetched), read under the install's lock so a
    # proposal being recorded is seen whole.
    async with deps.lock(namespace, install_name):
        install = await deps.kube.get(INSTALLS, namespace, install_name)
    why = drift.verify_proposed(update.body, install, GROUP)
    if why is not None:
        await reject(deps, update, f"not proposed by the operator: {why}")
        return Outcome(message=f"rejected: {why}")
    to_short = spec.to_sha[:12]
    if spec.dismissed:
        await write_update_status(deps, update, UpdateState.Dismissed, f"dismissed; {to_short} is not proposed again")
        emit("Normal", "Dismissed", f"update to {to_short} dismissed")
        await clear_pending(deps, namespace, install_name, name, "UpdateDismissed", "update dismissed")
        return Outcome(message="dismissed")
    if not spec.approved:
        if state != UpdateState.Pending or not update.status.written:
            update = await write_update_status(deps, update, UpdateState.Pending, "waiting for approval")
        await deps.mirror.update_changed(update.body)
        return Outcome(message="pending")

    to_sha = spec.to_sha
    attempts = update.status.attempts + 1
    update = await write_update_status(
        deps, update, UpdateState.Applying, f"installing {to_short}", extra={"attempts": attempts}
    )
    outcome = await reconcile_install(deps, namespace, install_name, target_sha=to_sha, update=name)
    after = await deps.kube.get(INSTALLS, namespace, install_name)
    if after is None or InstallView.parse(after).status.installed_sha != to_sha:
        delay = min(300.0, 10.0 * 2 ** min(attempts - 1, 5))
        message = f"apply of {to_short} failed (attempt {attempts}, retrying in {delay:.0f}s): {outcome.message}"
        await write_update_status(deps, update, UpdateState.Failed, message)
        emit("Warning", "ApplyFailed", message)
        return Outcome(retry_after=delay, message=message)
    await write_update_status(
        deps,
        update,
        UpdateState.Applied,
        f"installed {to_short}",
        extra={"appliedSHA": to_sha, "appliedAt": now_text()},
    )
    emit("Normal", "Applied", f"installed {to_short} into workspace {spec.workspace}")
    await clear_pending(deps, namespace, install_name, name, "UpToDate", f"update {name} applied")
    return Outcome(message="applied")


async def retry_update(deps: Deps, namespace: str, name: str, request: str) -> Outcome:
    """The `plugins.workspace.dev/retry` annotation: apply a Failed update again."""
    obj = await deps.kube.get(UPDATES, namespace, name)
    if obj is None:
        return Outcome(message="nothing to retry")
    update = UpdateView.parse(obj)
    if update.status.observed_retry == request:
        return Outcome(message="nothing to retry")
    await write_update_fields(deps, update, {"observedRetry": request})
    if update.state != UpdateState.Failed:
        return Outcome(message=f"not retried: the update is {update.state.value}")
    return await reconcile_update(deps, namespace, name)


async def clear_pending(deps: Deps, namespace: str, install_name: str, update: str, reason: str, message: str) -> None:
    """The install's record of its pending update goes once the update is
    applied or dismissed (unless it already names another one)."""
    async with deps.lock(namespace, install_name):
        obj = await deps.kube.get(INSTALLS, namespace, install_name)
        if obj is None:
            return
        install = InstallView.parse(obj)
        prev = install.status
        if prev.pending_update not in (None, update):
            return
        up_to_date = reason == "UpToDate"
        condition = cond.Condition("UpToDate", up_to_date, reason, message)
        changes: dict[str, str | None] = dict(NO_PENDING)
        if up_to_date and prev.pending_update == update and prev.pending_update_ref:
            # Applied: the install now follows the ref the update resolved
            # (e.g. the new highest tag), so the sweep compares like with like.
            changes["resolvedRef"] = prev.pending_update_ref
        await write_install_status(deps, install, install_status(install, [condition], **changes))
