"""Issue 7: secrets stay secret, and what a run writes is bounded.

A run's mask is fixed when it starts and kept (encrypted) with it; lines are
masked before a report is read from them; keys rotate without losing a secret;
local runs' files and the SQLite database are private to the console's user;
long lines are cut with a marker; log pages are bounded by bytes; a run's metric
names are capped. Real Docker, Celery, PostgreSQL and local processes; SQLite in
a process of its own.
"""

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import call_command
from django.core.management.base import CommandError
from playwright.sync_api import expect

from runs import metrics, reports, team_secrets
from runs.executors import get_executor
from runs.models import LogChunk, ResourcePreset, Run, RunEvent, TeamSecret
from runs.services import create_run, terminate_run
from tests.conftest import BUSYBOX, Api, in_thread, wait_for
from tests.test_engine import log_texts, wait_for_log
from tests.test_live import ORIGIN, collect, session_cookie

FINAL = {"completed", "failed", "terminated"}
ROOT = Path(__file__).resolve().parent.parent
# A valid metric name: a report parsed before masking would keep it as one.
VALUE = "hf_s3cr3tVALUE4242"
MARKER = "… [truncated {} bytes]"


@pytest.fixture(params=["docker", "local"])
def executor(request, engine):
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return request.param


def put_secret(user, name: str, value: str):
    api = Api(user)
    response = api.client.put(f"/api/v1/secrets/{name}", json.dumps({"value": value}), content_type="application/json", headers=api.headers)
    assert response.status_code == 200, response.content


def launch_with_secret(user, executor: str, command: str, **extra) -> Run:
    spec = yaml.safe_dump({"name": "secretive", "image": BUSYBOX, "env": {"TOKEN": {"secret": "TOKEN"}}, "run": [{"command": command}], **extra})
    return create_run(user=user, source=spec, executor=executor)


def everything_a_viewer_can_read(run: Run, user) -> str:
    """The stored log, metric names, events and the run's API answers, as one text."""
    api = Api(user)
    stored = [text for chunk in LogChunk.objects.filter(run=run) for _, _, text in chunk.lines]
    answers = [api.get(endpoint).content.decode() for endpoint in (
        f"/runs/{run.pk}", f"/runs/{run.pk}/events", f"/runs/{run.pk}/logs", f"/runs/{run.pk}/metrics", "/runs",
    )]
    answers.append(b"".join(api.get(f"/runs/{run.pk}/logs.txt").streaming_content).decode())
    answers.append(api.get(f"/runs/{run.pk}/logs/search", q="hf_").content.decode())
    row = Run.objects.filter(pk=run.pk).values()[0]
    row.pop("mask_ciphertext")
    events = list(RunEvent.objects.filter(run=run).values_list("reason", flat=True))
    return json.dumps([stored, metrics.keys(run), events, row, answers], default=str)


# ---------------------------------------------------------------- the mask is the run's


@pytest.mark.parametrize("executor, change", [("docker", "deleted"), ("local", "deleted"), ("docker", "changed")], indirect=["executor"])
def test_a_secret_removed_or_changed_mid_run_stays_masked_after_the_worker_restarts(alice, executor, change, celery_worker):
    put_secret(alice, "TOKEN", VALUE)
    run = launch_with_secret(
        alice, executor,
        'echo "before $TOKEN"; sleep 6; i=0; while [ $i -lt 20 ]; do echo "tick $i $TOKEN"; i=$((i+1)); sleep 0.1; done',
    )
    wait_for_log(run, "before ********")
    if change == "deleted":
        assert Api(alice).client.delete("/api/v1/secrets/TOKEN", headers=Api(alice).headers).status_code == 200
    else:
        put_secret(alice, "TOKEN", "a-brand-new-value")
    celery_worker.kill()  # the next collector starts afresh, after the change
    try:
        time.sleep(1)
    finally:
        celery_worker.start()
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    assert log_texts(run) == ["before ********"] + [f"tick {i} ********" for i in range(20)]
    assert VALUE not in everything_a_viewer_can_read(run, alice)
    assert VALUE.encode() not in bytes(run.mask_ciphertext)


def test_a_report_naming_a_secret_never_exposes_it(alice, viola, executor):
    put_secret(alice, "TOKEN", VALUE)
    run = launch_with_secret(alice, executor, " ; ".join([
        'echo "#runyard $TOKEN=1"',
        'echo "#runyard loss=0.5 $TOKEN=2"',
        'echo "#runyard step=1 loss=0.25"',
        'echo "#runyard loss=$TOKEN"',
        'echo "#runyard progress=0.5 $TOKEN/x=3"',
    ]))
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    # Masked first, then read as reports: a masked name is malformed, kept (masked) in the log.
    assert log_texts(run) == [
        "#runyard ********=1", "#runyard loss=0.5 ********=2", "#runyard loss=********", "#runyard progress=0.5 ********/x=3",
    ]
    assert run.reports_malformed == 4
    assert [key for key in metrics.keys(run) if not key.startswith("sys/")] == ["loss"]  # beside its CPU and memory
    assert [(step, value) for step, value, _ in metrics.points(run, "loss")] == [(1, 0.25)]
    for user in (alice, viola):
        assert VALUE not in everything_a_viewer_can_read(run, user)


def test_a_run_started_before_masks_were_kept_is_masked_with_the_current_secrets(alice, defaults):
    put_secret(alice, "TOKEN", VALUE)
    run = Run.objects.create(
        name="old", spec={"env": {"TOKEN": {"secret": "TOKEN"}}}, image=BUSYBOX, owner=alice, team=alice.teams.get(),
        preset=ResourcePreset.objects.get(name="cpu-small"), executor="local",
    )
    assert run.mask_ciphertext is None
    assert team_secrets.values_to_mask(run) == [VALUE]
    team_secrets.keep_mask(run.pk, [VALUE, "abc"])  # too short to mask: ordinary words
    team_secrets.keep_mask(run.pk, ["second-value"])  # a start tried again adds to it
    TeamSecret.objects.all().delete()
    assert team_secrets.values_to_mask(Run.objects.get(pk=run.pk)) == [VALUE, "second-value"]


# ---------------------------------------------------------------- keys and rotation


def legacy_ciphertext(material: str, value: str) -> bytes:
    """What Runyard stored before keys were derived with HKDF."""
    key = base64.urlsafe_b64encode(hashlib.sha256(("runyard-secrets:" + material).encode()).digest())
    return Fernet(key).encrypt(value.encode())


def readable(team) -> dict[str, str]:
    return {s.name: team_secrets.decrypt(s.ciphertext).decode() for s in TeamSecret.objects.filter(team=team)}


def test_keys_rotate_without_losing_a_secret(alice, settings):
    team = alice.teams.get()
    settings.RUNYARD_SECRETS_KEY = ""
    team_secrets.set_secret(team, "FROM_SECRET_KEY", "made-with-secret-key", alice)
    settings.RUNYARD_SECRETS_KEY = "old-key"
    TeamSecret.objects.create(team=team, name="LEGACY", ciphertext=legacy_ciphertext("old-key", "made-before-hkdf"), updated_by=alice)
    team_secrets.set_secret(team, "CURRENT", "made-with-old-key", alice)
    run = Run.objects.create(name="masked", spec={}, image=BUSYBOX, owner=alice, team=team,
                             preset=ResourcePreset.objects.get(name="cpu-small"), executor="local")
    team_secrets.keep_mask(run.pk, ["masked-value"])
    expected = {"FROM_SECRET_KEY": "made-with-secret-key", "LEGACY": "made-before-hkdf", "CURRENT": "made-with-old-key"}
    assert readable(team) == expected
    # Not a bare hash of the key any more.
    assert team_secrets.configured_keys() == ["old-key"]
    with pytest.raises(InvalidToken):
        Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"runyard-secrets:old-key").digest())).decrypt(
            bytes(TeamSecret.objects.get(name="CURRENT").ciphertext))

    settings.RUNYARD_SECRETS_KEY = "new-key, old-key"
    before = {s.name: bytes(s.ciphertext) for s in TeamSecret.objects.all()}
    assert readable(team) == expected
    call_command("rotate_secrets")
    assert all(bytes(s.ciphertext) != before[s.name] for s in TeamSecret.objects.all())

    settings.RUNYARD_SECRETS_KEY = "new-key"  # the old key is gone: everything was moved
    settings.SECRET_KEY = "another-secret-key"
    assert readable(team) == expected
    assert team_secrets.values_to_mask(Run.objects.get(pk=run.pk)) == ["masked-value"]

    settings.RUNYARD_SECRETS_KEY = "wrong-key"
    with pytest.raises(InvalidToken):
        readable(team)
    with pytest.raises(CommandError, match="could not be decrypted"):
        call_command("rotate_secrets")


# ---------------------------------------------------------------- private files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_local_runs_secrets_and_output_are_private(alice, engine):
    put_secret(alice, "TOKEN", VALUE)
    run = launch_with_secret(alice, "local", 'echo "umask $(umask)"; echo started; sleep 60', termination_grace="1s")
    wait_for_log(run, "started")
    run_dir = get_executor("local").run_dir(run)
    try:
        assert VALUE in (run_dir / "env.json").read_text()
        for folder in (run_dir.parent.parent, run_dir.parent, run_dir, run_dir / "runyard", run_dir / "work"):
            assert mode(folder) == 0o700, folder
        for name in ("env.json", "output.jsonl", "script.sh", "supervisor.log", "supervisor.pid", "pgid"):
            assert mode(run_dir / name) == 0o600, name
        # The run's own commands keep the umask the worker has: only Runyard's files are made private.
        ours = os.umask(0o022)
        os.umask(ours)
        assert log_texts(run)[0] == f"umask {ours:04o}"
    finally:
        terminate_run(run, actor=alice)
    wait_for(run.pk, FINAL, removed=True)


def test_the_embedded_database_and_var_folders_are_private(tmp_path):
    var = tmp_path / "var"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RUNYARD_VAR_DIR": str(var), "PYTHONPATH": str(ROOT)}
    migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v0"]

    def as_make_run():
        os.umask(0o022)  # what a shell usually has

    done = subprocess.run(migrate, cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=as_make_run, timeout=300)
    assert done.returncode == 0, done.stderr
    database = var / "runyard.sqlite3"
    assert mode(database) == 0o600
    for extra in (var / "runyard.sqlite3-wal", var / "runyard.sqlite3-shm", var / "secret_key"):
        if extra.exists():
            assert mode(extra) == 0o600, extra
    for folder in ("local-runs", "files"):
        assert mode(var / folder) == 0o700, folder
    # A database made readable by an older version is made private again.
    database.chmod(0o644)
    (var / "files").chmod(0o755)
    done = subprocess.run(migrate, cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=as_make_run, timeout=300)
    assert done.returncode == 0, done.stderr
    assert mode(database) == 0o600 and mode(var / "files") == 0o700


# ---------------------------------------------------------------- bounded lines and pages


def test_a_very_long_line_is_stored_cut_with_a_marker(alice, executor):
    put_secret(alice, "TOKEN", VALUE)
    x = "head -c {} /dev/zero | tr '\\0' {}"
    run = launch_with_secret(alice, executor, "; ".join([
        x.format(1048576, "x"), "echo",
        # A secret crossing where the line is held for masking: not even its beginning is kept.
        'printf %s "$TOKEN"', x.format(65522, "x"), 'printf %s "$TOKEN"', x.format(200000, "y"), "echo",
        "echo next",
    ]))
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    texts = log_texts(run)
    assert texts[0] == "x" * 65536 + MARKER.format(1048576 - 65536)
    assert texts[1].startswith("********" + "x" * 65522 + "… [truncated ")
    assert "hf_s" not in texts[1] and len(texts[1].encode()) < 65536 + 100
    assert texts[2] == "next"
    assert VALUE[:4] not in everything_a_viewer_can_read(run, alice)


def test_a_page_of_long_lines_is_bounded_by_bytes_and_resumes_without_a_gap(alice, engine, settings):
    count, width = 120, 60000
    run = create_run(user=alice, executor="local", source=yaml.safe_dump({"name": "wide", "image": BUSYBOX, "run": [{
        "command": f"i=1; while [ $i -le {count} ]; do printf '%03d-' $i; head -c {width} /dev/zero | tr '\\0' a; echo; i=$((i+1)); done",
    }]}))
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    expected = [f"{i:03d}-" + "a" * width for i in range(1, count + 1)]
    budget = 1024 * 1024
    settings.RUNYARD_LOG_PAGE_MAX_BYTES = budget
    api, after, seen, pages = Api(alice), 0, [], 0
    while True:
        response = api.get(f"/runs/{run.pk}/logs", after=after, limit=10000)
        assert response.status_code == 200
        assert len(response.content) <= budget + width  # the budget, or one line past it at most
        page = response.json()
        seen.extend(page["lines"])
        pages += 1
        if page["complete"]:
            break
        assert page["lines"] and page["next"] == page["lines"][-1]["n"]
        after = page["next"]
    assert pages > 5
    assert [line["n"] for line in seen] == list(range(1, count + 1))
    assert [line["text"] for line in seen] == expected
    # Search pages too.
    hits, after, done = [], 0, False
    while not done:
        response = api.get(f"/runs/{run.pk}/logs/search", q="-aaa", after=after, limit=1000)
        assert len(response.content) <= budget + width
        page = response.json()
        hits.extend(hit["n"] for hit in page["hits"])
        after, done = page["next"], page["done"]
    assert hits == list(range(1, count + 1))
    # The log socket sends it in batches of about a megabyte, every line once.
    _, _, messages = in_thread(collect, f"/ws/runs/{run.pk}/logs/?after=0", [ORIGIN, (b"cookie", session_cookie(alice))])
    batches = [m["lines"] for m in messages if m["type"] == "lines"]
    assert len(batches) > 5
    assert [line["n"] for batch in batches for line in batch] == list(range(1, count + 1))
    assert messages[-1] == {"type": "end", "status": "completed"}


# ---------------------------------------------------------------- bounded metric names


def test_a_report_with_20000_metrics_is_malformed():
    line = "#runyard " + " ".join(f"k{i}=1" for i in range(20000))
    with pytest.raises(reports.Malformed, match="more than 1000 metrics"):
        reports.parse(line, max_metrics=1000)
    assert len(reports.parse("#runyard " + " ".join(f"k{i}=1" for i in range(1000)), max_metrics=1000).metrics) == 1000


def test_a_runs_metric_names_are_capped(alice, engine):
    awk = "awk 'BEGIN{{{}}}'"
    run = create_run(user=alice, executor="local", source=yaml.safe_dump({"name": "many-metrics", "image": BUSYBOX, "run": [{"command": "; ".join([
        # 20,000 in one line: past the line cap and past the metric cap, malformed as a whole.
        awk.format('printf "#runyard"; for (i = 0; i < 20000; i++) printf " k%d=1", i; print ""'),
        # 1,500 in one line under the line cap: still more than a run may have.
        awk.format('printf "#runyard"; for (i = 0; i < 1500; i++) printf " w%d=1", i; print ""'),
        # 100 new names a line: the first ten lines fill the cap, the last two are refused.
        awk.format('for (l = 0; l < 12; l++) { printf "#runyard step=%d", l; for (i = 0; i < 100; i++) printf " m%d_%d=1", l, i; print "" }'),
        'echo "#runyard step=99 m0_0=2 progress=1"',  # names the run has are still taken
    ])}]}))
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    assert run.reports_malformed == 4
    keys = [key for key in metrics.keys(run) if not key.startswith("sys/")]  # its CPU and memory are not its own
    assert len(keys) == 1000 and not any(key.startswith(("k", "w", "m10_", "m11_")) for key in keys)
    assert [(step, value) for step, value, _ in metrics.points(run, "m0_0")] == [(0, 1.0), (99, 2.0)]
    assert run.progress == 1
    texts = log_texts(run)
    assert len(texts) == 4  # the refused reports stay in the log
    assert texts[0].endswith(" bytes]") and len(texts[0].encode()) < 65536 + 100


def test_the_log_page_shows_every_line_of_a_page_of_long_lines(browser, alice):
    # 2,000 lines of 8 KB: the first thousand (the viewer's first page, before the
    # socket's tail) are twice a response's byte bound.
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    from tests.test_page_logs import big_log_run, row, wait_until_visible

    def write_it():
        try:
            run = big_log_run(alice, lines=2000)
            for chunk in LogChunk.objects.filter(run=run):
                chunk.lines = [[at, stream, f"{text} " + "w" * 8000] for at, stream, text in chunk.lines]
                chunk.save(update_fields=["lines"])
            return run
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as thread:
        run = thread.submit(write_it).result()
    page = browser.page
    browser.goto(f"/runs/{run.pk}/logs/")
    wait_until_visible(page, 2000)
    page.get_by_label("Go to line").fill("900")
    page.get_by_label("Go to line").press("Enter")
    wait_until_visible(page, 900)
    expect(row(page, 900).locator(".log-text")).to_contain_text("line 900 wwww")
    page.wait_for_function("() => !document.querySelector('#log .log-row.is-pending')", timeout=15000)
