"""Run logs: every line stored once, in order, numbered from 1, even across a
worker crash (SPEC §3, issue 2 §7)."""

import time

import pytest

from runs import logstore
from runs import metrics
from runs.models import LogChunk, Run
from tests.conftest import ENGINE_EXECUTORS, use_executor, wait_for
from tests.test_engine import launch, log_texts

FINAL = {"completed", "failed", "terminated"}


def all_lines(run: Run) -> list[dict]:
    lines, after = [], 0
    while True:
        page = logstore.read_lines(run, after=after, limit=10000)
        if not page["lines"]:
            return lines
        lines.extend(page["lines"])
        after = page["next"]


def assert_numbered_exactly(run: Run, expected_texts: list[str]):
    lines = all_lines(run)
    assert [line["n"] for line in lines] == list(range(1, len(expected_texts) + 1))
    texts = [line["text"] for line in lines]
    if texts != expected_texts:
        missing = sorted(set(expected_texts) - set(texts))[:5]
        doubled = len(texts) - len(set(texts))
        raise AssertionError(f"{len(texts)} lines stored, {len(expected_texts)} printed; missing {missing}; {doubled} doubled")


@pytest.fixture(params=ENGINE_EXECUTORS)
def executor(request, engine):
    return use_executor(request)


def test_it_stores_200000_lines_in_order(alice, engine, docker_engine):
    run = launch(alice, "docker", "seq 1 200000")
    run = wait_for(run.pk, FINAL, timeout=240, removed=True)
    assert run.status == "completed", run.status_reason
    assert run.log_lines == 200000
    assert_numbered_exactly(run, [str(i) for i in range(1, 200001)])
    # Stored in chunks, not a row per line.
    assert LogChunk.objects.filter(run=run).count() < 1000
    assert logstore.read_lines(run, after=199990, limit=100)["complete"] is True


def test_it_keeps_streams_progress_bars_and_unfinished_lines(alice, executor):
    run = launch(
        alice, executor,
        "echo out; echo err >&2; printf 'step 10%%\\rstep 50%%\\rstep 100%%\\n'; printf 'crlf line\\r\\n'; printf 'no newline at the end'",
    )
    run = wait_for(run.pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    lines = all_lines(run)
    by_text = {line["text"]: line["stream"] for line in lines}
    assert by_text == {
        "out": "stdout", "err": "stderr", "step 100%": "stdout", "crlf line": "stdout", "no newline at the end": "stdout",
    }


def test_a_progress_bar_without_newlines_does_not_flood_the_log(alice, executor):
    # 3000 in-place updates, as tqdm writes them, then a newline: one line, its last state.
    run = launch(alice, executor, "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); printf '\\rprogress %d/3000' $i; done; echo; echo after")
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    texts = log_texts(run)
    assert texts[-1] == "after"
    assert texts[-2] == "progress 3000/3000"
    assert len(texts) < 10  # docker cuts a line at 16 KiB: a few parts at most, never 3000 lines


def test_a_very_long_line_is_kept_whole(alice, executor):
    run = launch(alice, executor, "i=0; s=''; while [ $i -lt 5000 ]; do s=\"${s}abcdefghij\"; i=$((i+1)); done; echo \"$s\"; echo next")
    run = wait_for(run.pk, FINAL, timeout=120, removed=True)
    assert run.status == "completed", run.status_reason
    assert log_texts(run) == ["abcdefghij" * 5000, "next"]


def test_a_killed_worker_loses_and_doubles_no_line(alice, executor, celery_worker):
    # About 12 s of output in bursts, a metric report every 10 lines; the worker
    # dies with kill -9 in the middle.
    count = 30000
    run = launch(alice, executor, f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo line-$i; "
                                  "[ $((i % 10)) -eq 0 ] && echo \"#runyard step=$i n=$i\"; "
                                  "[ $((i % 250)) -eq 0 ] && sleep 0.1; done; exit 0")
    deadline = time.monotonic() + 60
    while Run.objects.get(pk=run.pk).log_lines < 2000:
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.05)
    celery_worker.kill()
    try:
        time.sleep(1)
        assert Run.objects.get(pk=run.pk).status == "running"
    finally:
        celery_worker.start()
    run = wait_for(run.pk, FINAL, timeout=180, removed=True)
    assert run.status == "completed", run.status_reason
    assert_numbered_exactly(run, [f"line-{i}" for i in range(1, count + 1)])
    # Reports ride in the same transactions as the lines: none lost or doubled either.
    points = [(step, value) for step, value, _ in metrics.points(run, "n")]
    assert points == [(i, float(i)) for i in range(10, count + 1, 10)]
