"""Start-up: finish or abandon the hand-overs a crash interrupted (jobs left in
state ``intake``; see :mod:`daemon.intake.handover` for the order of steps)."""

from __future__ import annotations

from pathlib import Path

from daemon.config import Settings
from daemon.errors import ContentError, MissingSidecarError, OrphanSidecarError
from daemon.fsutil import fsync_dir, rename_noreplace
from daemon.intake.handover import HandOver
from daemon.intake.judging import Verdict, is_delete, judge
from daemon.names import is_sidecar
from daemon.queue import Job, JobState


def recover(settings: Settings, handover: HandOver) -> dict[str, int]:
    """Finish or abandon hand-overs a crash interrupted."""
    counts = {"finished": 0, "abandoned": 0}
    for job in handover.queue.jobs(states=(JobState.INTAKE,), limit=100_000):
        try:
            counts[_recover_one(settings, handover, job)] += 1
        except OSError as exc:
            # One unreadable spool file must not stop the start (a crash-restart
            # loop): the job stays in intake, its files in the spool, and the
            # next start tries again.
            handover.log.error(
                "intake.recover_failed",
                job_id=job.id,
                exc_type=type(exc).__name__,
                error=exc.strerror,
            )
    return counts


def _recover_one(settings: Settings, handover: HandOver, job: Job) -> str:
    try:
        dest = settings.get_destination(job.destination)
    except KeyError:
        handover.queue.abandon_intake(job.id, "destination no longer configured")
        return "abandoned"
    spool_doc = Path(job.spool_document or "")
    if not (spool_doc.exists() or spool_doc.is_symlink()):
        handover.queue.abandon_intake(job.id, "hand-over interrupted before the move")
        return "abandoned"
    side = Path(job.spool_sidecar) if job.spool_sidecar else None
    if side is not None and job.sidecar_name and not side.exists():
        inbox_side = dest.inbox / job.sidecar_name
        if inbox_side.exists():
            rename_noreplace(inbox_side, side)
            fsync_dir(side.parent)
            fsync_dir(inbox_side.parent)
    if side is not None and not side.exists():
        verdict = Verdict(rejection=MissingSidecarError("the sidecar disappeared during hand-over"))
    elif is_sidecar(job.original_name) and side is None:
        if is_delete(spool_doc):
            verdict = judge(
                dest, settings, spool_doc, None, name=job.original_name,
                sidecar_only=True,
            )  # fmt: skip
        else:
            verdict = Verdict(rejection=OrphanSidecarError("a sidecar arrived but no document"))
    else:
        verdict = judge(dest, settings, spool_doc, side, name=job.original_name)
        if verdict.incomplete is not None:
            verdict = Verdict(rejection=ContentError(verdict.incomplete))
    handover.complete(job, dest, verdict)
    return "finished"
