"""`pause_generation` and `continue_generation`: what each pause mode does to the requests
already running, and the reply that says so. Requests that arrive while paused wait in
admission (`Admission.wait_running`) and go through it as usual after continue."""

from __future__ import annotations

from node.admission import Admission, PauseMode
from node.errors import BadRequest, OperationConflict
from node.refit.messages import ContinueReport, PauseReport


async def pause_generation(
    admission: Admission, mode: PauseMode, drain_timeout_s: float
) -> PauseReport:
    if admission.paused is not None:
        return PauseReport(message=f"already paused ({admission.paused}): nothing changed",
                           paused=True, mode=admission.paused, already_paused=True)
    if mode is PauseMode.RETRACT:
        raise BadRequest(
            "this node does not retract requests (re-running them from their prompt after "
            "continue): pause with mode abort, in_place or wait")
    inflight = len(admission.inflight)
    admission.pause(mode)
    if mode is PauseMode.ABORT:
        aborted = admission.abort_all("aborted: generation paused (pause_generation mode=abort)")
        return PauseReport(message=f"paused; {aborted} requests aborted", paused=True,
                           mode=mode, aborted=aborted)
    if mode is PauseMode.IN_PLACE:
        return PauseReport(
            message=f"paused; {inflight} requests stop at their next step until continue",
            paused=True, mode=mode, frozen=inflight)
    if not await admission.wait_idle(drain_timeout_s):
        still = admission.inflight
        admission.unpause()
        raise OperationConflict(
            f"pause (mode=wait) timed out after {drain_timeout_s:g}s with {len(still)} requests "
            "still in flight; generation was not paused", inflight=still)
    return PauseReport(message=f"paused once {inflight} requests finished", paused=True,
                       mode=mode, waited_for=inflight)


def continue_generation(admission: Admission) -> ContinueReport:
    if admission.paused is None:
        return ContinueReport(message="not paused: nothing changed", already_running=True)
    frozen = admission.unpause()
    return ContinueReport(message=f"generation continues; {frozen} frozen requests go on",
                          resumed_frozen=frozen)
