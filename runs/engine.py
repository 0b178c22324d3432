"""The run engine: the work behind the Celery tasks, one function a task.

Every function takes a run id and is idempotent: delivered twice, or re-run after
its worker died, it does the work once. Work on a run is guarded by a lease on
its row (runs.leases); the reconciler hands expired leases on.
"""

import logging
import time
import uuid
from datetime import timedelta

from django.db.models import F, IntegerField, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from runs import credentials, exports, imports, slots, team_secrets
from runs.executors import EXECUTOR_NAMES, executor_for, get_executor, swarm_executors
from runs.executors.base import ExecutorError, ExitInfo, Limits, Placement, log_batches
from runs.leases import LeaseHeartbeat, LeaseLost, release_lease, renew_lease, take_lease
from runs.lifecycle import FINAL, LIVE, IllegalTransition, transition
from runs.logstore import LogWriter
from runs.models import Run, Status
from runs.spec import keeps_alive
from runs.system_metrics import SystemSampler

log = logging.getLogger(__name__)

RENEW_EVERY_SECONDS = 5.0
MAIN_EXIT_CHECK_SECONDS = 1.0
PLACEMENT_CHECK_SECONDS = 0.5
# A Docker run's commands wait at a gate for its collector (runs.executors.docker);
# one whose collector has not come this long after the start (every collector busy,
# say) is let through by the reconciler: its output waits in the engine's log.
GATE_PATIENCE_SECONDS = 3.0


def _new_owner(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


# What a start came to.
STARTED, SUBMITTED, TERMINATED_MEANWHILE, NOTHING = "started", "submitted", "terminated", ""


def start_run(run_id: int) -> None:
    """pending → initializing → running, or failed with the reason.

    A pending run starts only when its team and the installation have a slot for it
    (runs.slots); else it stays pending, saying why. The lease is renewed for as
    long as the start takes (a git clone, filling a large dataset volume), so the
    reconciler does not hand the run to a second start meanwhile.
    """
    owner = _new_owner("start")
    if not take_lease(run_id, owner):
        return
    try:
        with LeaseHeartbeat(run_id, owner) as heartbeat:
            outcome = _start(run_id, heartbeat)
    finally:
        release_lease(run_id, owner)
    if outcome in (STARTED, SUBMITTED):
        from runs.tasks import enqueue

        enqueue("collect", run_id)  # a submitted run's collector also watches it being placed
    elif outcome == TERMINATED_MEANWHILE:
        stop_run(run_id)  # the user terminated it while we were starting it: honour that now


def _start(run_id: int, heartbeat: LeaseHeartbeat) -> str:
    status, submitted_at = Run.objects.values_list("status", "submitted_at").get(pk=run_id)
    if status == Status.PENDING and not submitted_at:
        if not slots.admit(run_id):
            return NOTHING
    elif status not in (Status.INITIALIZING, Status.PENDING):
        return NOTHING
    # Read after the admission, in one query with what the start reads of it.
    run = Run.objects.select_related("preset", "team", "cluster").get(pk=run_id)
    executor = executor_for(run)
    try:
        env = _resolve_env(run)
        pull = credentials.image_pull_for(run)
        digest = executor.prepare(run, pull)
        if digest != run.image_digest:
            run.image_digest = digest
            Run.objects.filter(pk=run_id).update(image_digest=digest)
        limits = Limits(cpus=float(run.preset.cpus), memory_mb=run.preset.memory_mb, gpus=run.preset.gpus)
        handle = executor.start(run, env, limits, imports.volumes_for(run), pull)
    except ExecutorError as exc:
        if heartbeat.lost:
            # Another worker owns the start now: whether the run failed is its call.
            log.warning("run %s: start failed after its lease was taken over: %s", run_id, exc)
            return NOTHING
        if run.status == Status.PENDING and exc.retry:
            # Its cluster's manager is away: the run waits, and the reconciler tries again.
            slots.say_why_waiting({run_id: f"waiting: {exc}"})
            return NOTHING
        if run.status == Status.PENDING:
            # A submitted run fails at initializing, as on one engine (SPEC §1).
            try:
                transition(run_id, Status.INITIALIZING, reason="checking the image", only_from=[Status.PENDING])
            except IllegalTransition:
                return NOTHING
        _fail_initializing(run, executor, str(exc))
        return NOTHING
    if executor.places_runs:
        return SUBMITTED  # its cluster starts it when a node has room; the collector watches
    try:
        transition(run_id, Status.RUNNING, reason="main process started", only_from=[Status.INITIALIZING], container_id=handle[:100])
        return STARTED
    except IllegalTransition as exc:
        if exc.current == Status.TERMINATED:
            return TERMINATED_MEANWHILE
        # Another worker started it first: its container is the run's, and it stays.
        log.info("run %s: already %s, started by another worker", run_id, exc.current)
        return NOTHING


def _resolve_env(run: Run) -> dict[str, str]:
    env = {name: value for name, value in run.spec.get("env", {}).items() if isinstance(value, str)}
    env.update(team_secrets.resolve_env_for_start(run))  # also fixes the run's mask
    env["RUNYARD_RUN_ID"] = str(run.pk)
    return env


def _fail_initializing(run: Run, executor, reason: str) -> None:
    try:
        transition(run.pk, Status.FAILED, reason=reason, only_from=[Status.INITIALIZING])
    except IllegalTransition as exc:
        if exc.current != Status.TERMINATED:
            return  # another worker started the run meanwhile: not ours to remove
        # terminated meanwhile: that status stands, and nothing of the run is kept
    executor.remove(run)
    Run.objects.filter(pk=run.pk).update(container_removed_at=timezone.now(), log_complete=True)


def collect_run(run_id: int) -> None:
    """Store the run's output until its main process ends, then finalize it.

    Resumes exactly after the last stored line. With termination protection the
    run turns idle when its command ends, and collection stops there.
    """
    owner = _new_owner("collect")
    if not take_lease(run_id, owner):
        return
    writer = None
    try:
        run = Run.objects.select_related("preset").get(pk=run_id)
        if run.container_removed_at:
            return
        executor = executor_for(run)
        if run.status in (Status.PENDING, Status.INITIALIZING):
            if not (executor.places_runs and (run.submitted_at or run.status == Status.INITIALIZING)):
                return  # its start task brings it to running
            run = _await_placement(run_id, executor, owner)
            if run is None:
                return
        if run.status == Status.TERMINATED:
            executor.stop(run, _remaining_grace(run))
        if run.status == Status.IDLE and executor.exists(run):
            return  # nothing to collect until someone terminates it
        # Full chunks are stored by the writer's own thread while this one reads on.
        writer = LogWriter(run, owner, mask=team_secrets.values_to_mask(run), background=True)
        watch_main_exit = run.status == Status.RUNNING and keeps_alive(run.spec)
        sampler = SystemSampler(executor, run)  # its CPU and memory, stored with the lines
        renewed = checked = time.monotonic()
        vanished = ""
        try:
            if not executor.exists(run):
                raise ExecutorError("container disappeared")
            for frames in log_batches(executor, run, run.log_cursor):
                if frames:
                    writer.add_frames(frames)  # flushes each full chunk
                if sampler.due():
                    reading = sampler.take()
                    if reading is not None:
                        writer.add_system_metrics(*reading)
                if writer.due():
                    writer.flush(wait=False)
                    renewed = time.monotonic()
                elif time.monotonic() - renewed > RENEW_EVERY_SECONDS:
                    renew_lease(run_id, owner)
                    renewed = time.monotonic()
                if watch_main_exit and frames is None and time.monotonic() - checked > MAIN_EXIT_CHECK_SECONDS:
                    checked = time.monotonic()
                    code = executor.main_exit_code(run)
                    if code is not None:
                        writer.flush()
                        _go_idle(run_id, code, "interactive" if run.spec.get("interactive") is not None else "termination protection")
                        return
        except ExecutorError as exc:
            if exc.retry:
                writer.flush()
                raise  # a passing trouble: the reconciler hands the run to a new collector
            vanished = str(exc)
        writer.end_pending_lines()
        writer.flush()
        # Copying exports out can take longer than a lease: keep it, so no second
        # collector copies them again meanwhile.
        with LeaseHeartbeat(run_id, owner) as heartbeat:
            _finalize(run_id, executor, vanished, heartbeat)
    except LeaseLost:
        log.info("run %s: another collector took over", run_id)
    finally:
        if writer is not None:
            writer.close()
        release_lease(run_id, owner)


def _await_placement(run_id: int, executor, owner: str) -> Run | None:
    """A run its cluster places (Swarm): `pending` while no node has room, saying why;
    `initializing` while its node pulls the image; returns the run once its main
    process runs, or ended meanwhile (terminated: the caller stops it). None if it
    failed to start (settled here)."""
    renewed = time.monotonic()
    while True:
        run = Run.objects.select_related("preset").get(pk=run_id)
        if run.status not in (Status.PENDING, Status.INITIALIZING):
            return run
        try:
            placement = executor.placement(run)
        except ExecutorError as exc:
            if not exc.retry:
                raise
            placement = Placement("waiting", reason=f"waiting: {exc}")  # the manager is away: ask again
        if placement.state == "waiting":
            slots.say_why_waiting({run_id: placement.reason})
        elif placement.state in ("initializing", "running") or (placement.state == "ended" and placement.ran):
            try:
                if run.status == Status.PENDING:
                    transition(run_id, Status.INITIALIZING, reason=f"placed on node {placement.node}",
                               only_from=[Status.PENDING], node=placement.node)
                if placement.state == "running":
                    executor.begin(run)  # what its commands wait for (the export folders)
                if placement.state != "initializing":
                    transition(run_id, Status.RUNNING, reason=f"main process started on node {placement.node}",
                               only_from=[Status.INITIALIZING], node=placement.node)
            except IllegalTransition:
                continue  # terminated meanwhile: read it again
            except ExecutorError as exc:
                if not exc.retry:
                    _fail_initializing(run, executor, str(exc))
                    return None
                log.info("run %s: %s; trying again", run_id, exc)  # its node answers again, or the Swarm gives up on it
        else:  # it ended without running (the image could not be pulled), or its service is gone
            if run.status == Status.PENDING:
                try:
                    transition(run_id, Status.INITIALIZING, reason="placed", only_from=[Status.PENDING], node=placement.node)
                except IllegalTransition:
                    continue
            _fail_initializing(run, executor, placement.reason)
            return None
        if time.monotonic() - renewed > RENEW_EVERY_SECONDS:
            renew_lease(run_id, owner)
            renewed = time.monotonic()
        time.sleep(PLACEMENT_CHECK_SECONDS)


def _remaining_grace(run: Run) -> float:
    """What is left of the grace the user's terminate started (a retried stop does not restart it)."""
    if run.stop_deadline is None:
        return run.termination_grace
    return max(0.0, (run.stop_deadline - timezone.now()).total_seconds())


def _go_idle(run_id: int, exit_code: int, why: str = "termination protection") -> None:
    try:
        transition(
            run_id, Status.IDLE, reason=f"command ended with exit code {exit_code}; kept alive ({why})",
            only_from=[Status.RUNNING], exit_code=exit_code,
        )
    except IllegalTransition:
        pass


def describe_exit(info: ExitInfo) -> str:
    if info.exit_code is None:
        return info.reason or "exit code unknown"
    text = f"exit code {info.exit_code}"
    return f"{text} ({info.reason})" if info.reason else text


def _finalize(run_id: int, executor, vanished: str, heartbeat: LeaseHeartbeat) -> None:
    """The container ended and its output is stored: settle the status, remove it.

    Raises LeaseLost, before changing anything more, once another collector holds the run."""
    run = Run.objects.get(pk=run_id)
    info = ExitInfo(None, vanished) if vanished else executor.exit_info(run)
    if run.status == Status.RUNNING:
        try:
            run = transition(run_id, Status.STOPPING, reason=describe_exit(info), only_from=[Status.RUNNING], exit_code=info.exit_code)
        except IllegalTransition:
            run.refresh_from_db()
    if run.status == Status.STOPPING:
        target = Status.COMPLETED if info.exit_code == 0 else Status.FAILED
        reason = "exit code 0" if target == Status.COMPLETED else describe_exit(info)
        if not vanished:
            try:
                exports.copy_exports(run, executor, partial=False, guard=heartbeat.check)
            except exports.ExportError as exc:
                target, reason = Status.FAILED, str(exc)
                Run.objects.filter(pk=run_id).update(exports_state="failed")
            else:
                if target == Status.COMPLETED:
                    # Before it completes: whoever sees it completed finds the versions it made.
                    target, reason = _publish_versions(run, reason, heartbeat)
        heartbeat.check()
        try:
            transition(run_id, target, reason=reason, only_from=[Status.STOPPING], exit_code=info.exit_code)
        except IllegalTransition:
            pass
    elif run.status == Status.TERMINATED and not vanished and run.started_at:
        # What a stopped run wrote is kept; cut short mid-command, it is marked partial.
        try:
            exports.copy_exports(run, executor, partial=run.idle_at is None, guard=heartbeat.check)
        except exports.ExportError as exc:
            log.warning("run %s: %s", run_id, exc)
            Run.objects.filter(pk=run_id).update(exports_state="failed")
        else:
            if run.idle_at is not None and run.exit_code == 0:  # its command had completed: its outputs are whole
                _publish_versions(run, "", heartbeat)
    elif run.status == Status.IDLE:
        # The container ended on its own while idle (killed from outside, out of memory).
        try:
            transition(run_id, Status.TERMINATED, reason=f"container ended while idle: {describe_exit(info)}", only_from=[Status.IDLE])
        except IllegalTransition:
            pass
    heartbeat.check()
    executor.remove(run)
    # One update: whoever sees the container gone also sees how it ended.
    Run.objects.filter(pk=run_id).update(
        container_removed_at=timezone.now(), log_complete=True,
        exit_code=Coalesce(F("exit_code"), Value(info.exit_code, output_field=IntegerField())),
    )


def _publish_versions(run: Run, reason: str, heartbeat: LeaseHeartbeat) -> tuple[str, str]:
    """The model and dataset versions the run's exports make (runs.exports); the
    status it ends in and its reason, which says what was made."""
    try:
        made = exports.publish_versions(run, guard=heartbeat.check)
    except exports.ExportError as exc:
        log.warning("run %s: %s", run.pk, exc)
        return Status.FAILED, str(exc)
    return Status.COMPLETED, "; ".join([part for part in [reason, *made] if part])


def stop_run(run_id: int) -> None:
    """After a terminate: SIGTERM, the grace, SIGKILL; then collect what is left and remove."""
    run = Run.objects.get(pk=run_id)
    if run.container_removed_at or run.status not in FINAL:
        # Only a final run is stopped (a terminated one, or one whose container was
        # left behind): a live run's container belongs to its start and collect tasks.
        return
    executor = executor_for(run)
    executor.stop(run, _remaining_grace(run))
    # If a collector is still following the output it finalizes; else this one does.
    collect_run(run_id)


def reconcile_runs() -> dict[str, int]:
    """Repair what a crash left behind; run every few seconds by celery beat.

    Hands runs whose worker died (lease expired) to new tasks, removes
    containers that belong to no live run, and ends on record the terminal
    sessions of a console process that was killed (terminal.consoles).
    """
    from runs.services import end_idle_runs_past_limit, end_runs_past_max_runtime
    from runs.tasks import enqueue
    from terminal.consoles import end_sessions_of_lost_consoles

    now = timezone.now()
    lease_free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    counts = {"start": 0, "collect": 0, "stop": 0, "orphans": 0}
    # Idle runs bill until someone ends them: past their team's idle limit, the reconciler does.
    counts["idle_timeout"] = end_idle_runs_past_limit()
    # Interactive runs end when their max_runtime is up.
    counts["max_runtime"] = end_runs_past_max_runtime()
    # Pending runs that fit now (their start was lost, or a slot freed unnoticed);
    # one just created has its own start on the way.
    counts["start"] += slots.dispatch(min_age_seconds=10)
    for run_id in Run.objects.filter(lease_free, status=Status.INITIALIZING).values_list("pk", flat=True):
        enqueue("start", run_id, on_commit=False)
        counts["start"] += 1
    # Runs handed to their cluster (Swarm) and left by their worker: the start makes sure
    # their service exists (it is idempotent) and hands them to a collector that watches.
    for run_id in Run.objects.filter(lease_free, status=Status.PENDING, submitted_at__isnull=False).values_list("pk", flat=True):
        enqueue("start", run_id, on_commit=False)
        counts["start"] += 1
    counts["gates_opened"] = _open_gates(lease_free)
    for run_id in Run.objects.filter(lease_free, status__in=[Status.RUNNING, Status.STOPPING]).values_list("pk", flat=True):
        enqueue("collect", run_id, on_commit=False)
        counts["collect"] += 1
    leftover = Run.objects.filter(lease_free, status__in=FINAL, container_removed_at__isnull=True)
    for run_id in leftover.values_list("pk", flat=True):
        enqueue("stop", run_id, on_commit=False)
        counts["stop"] += 1
    for run in Run.objects.filter(lease_free, status=Status.IDLE):
        try:
            gone = not executor_for(run).exists(run)
        except Exception:  # its engine is away: asked again next round
            log.warning("run %s: could not tell whether its container is still there", run.pk, exc_info=True)
            continue
        if gone:
            enqueue("collect", run.pk, on_commit=False)
    counts["orphans"] = _remove_orphans()
    # Terminal sessions of a console that was killed are ended on record, not left open.
    counts["terminals_lost"] = end_sessions_of_lost_consoles()
    return counts


def _open_gates(lease_free: Q) -> int:
    """Let the commands of runs whose collector has not come begin without it. Under
    the run's lease, so that no collector attaches and opens the gate meanwhile (a
    second opening would be a line on the run's stdin)."""
    opened = 0
    since = timezone.now() - timedelta(seconds=GATE_PATIENCE_SECONDS)
    for run in Run.objects.filter(lease_free, status=Status.RUNNING, started_at__lt=since).select_related("cluster"):
        executor = executor_for(run)
        if not hasattr(executor, "open_gate"):
            continue
        owner = _new_owner("gate")
        if not take_lease(run.pk, owner):
            continue
        try:
            if executor.open_gate(run):
                log.info("run %s: no collector came, its commands begin without one", run.pk)
                opened += 1
        except Exception:  # its engine is away: tried again next round
            log.warning("run %s: could not open its gate", run.pk, exc_info=True)
        finally:
            release_lease(run.pk, owner)
    return opened


def _remove_orphans() -> int:
    removed = 0
    for executor in [get_executor(name) for name in EXECUTOR_NAMES] + swarm_executors():
        name = executor.name
        try:
            present = executor.live_run_ids()
        except Exception:  # an engine that is not there has no orphans to remove
            continue
        if not present:
            continue
        keep = set(
            Run.objects.filter(pk__in=present)
            .filter(Q(status__in=LIVE) | Q(container_removed_at__isnull=True))
            .values_list("pk", flat=True)
        )
        for run_id in present - keep:
            log.warning("removing orphaned %s container of run %s", name, run_id)
            executor.remove(Run(pk=run_id))
            removed += 1
    return removed
