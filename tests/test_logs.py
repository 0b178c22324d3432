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


def _stored_by(alice, feed) -> tuple[Run, tuple]:
    """A new run's collector writer fed by `feed(writer)`, then flushed: the run, and
    what it stored (lines, counts, cursor, reports)."""
    import yaml

    from runs.leases import take_lease
    from runs.services import create_run

    run = create_run(user=alice, source=yaml.safe_dump({"name": "fed", "image": "runyard/busybox:latest",
                                                        "run": [{"command": "true"}]}), executor="local")
    assert take_lease(run.pk, "collector")
    writer = logstore.LogWriter(Run.objects.get(pk=run.pk), "collector")
    feed(writer)
    writer.flush()
    run = Run.objects.get(pk=run.pk)
    return run, ([(line["n"], line["t"], line["stream"], line["text"]) for line in all_lines(run)],
                 run.log_lines, run.log_cursor, run.reports_malformed, run.metrics_last,
                 {key: metrics.columns(run, key) for key in metrics.keys(run)})


def _add_one_by_one(writer, frames) -> None:
    for frame in frames:
        writer.add(frame)
        if writer.due():
            writer.flush()


def test_a_batch_of_frames_stores_what_frames_one_by_one_store(alice, settings):
    # The collector takes what the executor read at once (LogWriter.add_frames): plain
    # lines on a fast path, any other through add(). Both ways store the same, and a
    # batch longer than a chunk is flushed chunk by chunk, numbered without a gap.
    from runs.executors.base import LogFrame

    settings.RUNYARD_LOG_LINE_MAX_BYTES = 100
    texts = [b"plain %d\n" % i for i in range(logstore.MAX_CHUNK_LINES + 5)]
    texts[3:3] = [b"#runyard step=1 loss=0.5\n", b"#runyard step=x\n", b"half ", b"a line\n", b"bar 10%\rbar 90%\n",
                  b"caf\xc3\xa9 \xff\n", b"x" * 150 + b"\n", b"#runyard step=2 loss=0.25 acc=1\n", b"\n"]
    # And a run of one metric's usual reports longer than a chunk, read at once (reports.plain_metric_lines).
    texts += [b"#runyard step=%d loss=%d\n" % (step, step % 7) for step in range(3, logstore.MAX_CHUNK_POINTS + 10)]
    frames = [LogFrame(cursor=i + 1, time=1000.0 + i / 3, stream=i % 2 if i < 3 else 0, data=text)
              for i, text in enumerate(texts)]
    def batched(writer):
        reports_from = len(frames) - logstore.MAX_CHUNK_POINTS - 7
        for batch in (frames[:7], frames[7:reports_from], frames[reports_from:]):
            writer.add_frames(batch)

    _, stored = _stored_by(alice, batched)
    assert stored == _stored_by(alice, lambda writer: _add_one_by_one(writer, frames))[1]
    lines, count, cursor, malformed, last, points = stored
    reported = logstore.MAX_CHUNK_POINTS + 7
    assert count == len(lines) == len(texts) - 3 - reported and cursor == len(texts) and malformed == 1
    assert [line[3] for line in lines[:9]] == ["plain 0", "plain 1", "plain 2", "#runyard step=x", "half a line",
                                               "bar 90%", "café \ufffd", "x" * 100 + "… [truncated 50 bytes]", ""]
    assert last == {"loss": float((logstore.MAX_CHUNK_POINTS + 9) % 7), "acc": 1.0}
    assert points["loss"][0] == [1, 2, *range(3, logstore.MAX_CHUNK_POINTS + 10)]
    assert points["loss"][1][2:] == [float(step % 7) for step in range(3, logstore.MAX_CHUNK_POINTS + 10)]


def test_line_runs_store_what_their_frames_store(alice, settings):
    # An attach hands the collector runs of short lines as one LineRun each, taken whole
    # where they are plain lines or one known metric's usual reports, else frame by
    # frame. Either way the same is stored as the frames one by one store, and the
    # chunks stay within their bounds of lines, points and bytes.
    from runs.executors.base import LineRun, LogFrame, frames_in

    settings.RUNYARD_LOG_LINE_MAX_BYTES = 1000

    def line_run(texts, stream=0, at=1000.0):
        return [texts, stream, at]

    runs = [
        line_run([b"plain %d\n" % i for i in range(logstore.MAX_CHUNK_LINES + 5)]),  # a chunk full by lines
        line_run([b"#runyard step=%d loss=%d\n" % (step, step % 7) for step in range(1, 6)]),  # unknown yet: alone
        line_run([b"err %d\n" % i for i in range(3)], stream=1),
        line_run([b"#runyard step=%d loss=%d\n" % (step, step % 7) for step in range(6, logstore.MAX_CHUNK_POINTS + 10)]),
        line_run([b"#runyard step=1 acc=0.5\n", b"#runyard step=2 loss=0.25\n"]),  # two metrics: line by line
        line_run([b"a plain line\n", b"#runyard step=3 loss=0.5\n", b"#runyard step=x\n"]),  # a mix, a malformed one
        line_run([b"y" * 999 + b"\n"] * 1100, at=1001.5),  # a chunk full by bytes (1 MB) before 2,000 lines
        line_run([b"x" * 1500 + b"\n", b"short\n"]),  # a line past the cap: cut, with its marker
        line_run([b"caf\xc3\xa9\n", b"plain\n"]),  # not ASCII
        line_run([b"#runyard step=%d loss=inf\n" % step for step in range(2)]),  # not finite: read alone, malformed
    ]
    cursor, batches = 0, []
    for texts, stream, at in runs:
        batches.append([LineRun(b"".join(texts), len(texts), cursor + 1, 1, at, stream)])
        cursor += len(texts)
    # A line begun on stdout (no newline yet) before a run of stdout lines: the run is not plain then.
    batches.append([LogFrame(cursor + 1, 1002.0, 0, b"half "), LineRun(b"a line\nmore\n", 2, cursor + 2, 1, 1002.0, 0)])

    def by_line_runs(writer):
        for batch in batches:
            writer.add_frames(batch)

    run, stored = _stored_by(alice, by_line_runs)
    frames = [frame for batch in batches for frame in frames_in(batch)]
    assert stored == _stored_by(alice, lambda writer: _add_one_by_one(writer, frames))[1]
    chunks = LogChunk.objects.filter(run=run)
    assert max(chunk.line_count for chunk in chunks) <= logstore.MAX_CHUNK_LINES
    assert max(sum(len(line[2]) for line in chunk.lines) for chunk in chunks) < logstore.MAX_CHUNK_BYTES + 1000
    assert max(chunk.count for chunk in run.metric_chunks.all()) <= logstore.MAX_CHUNK_POINTS
    lines, count, cursor_after, malformed, last, points = stored
    assert cursor_after == cursor + 3 and malformed == 3  # step=x, and the two infinite ones
    assert points["loss"][0] == [*range(1, logstore.MAX_CHUNK_POINTS + 10), 2, 3]
    assert last == {"loss": 0.5, "acc": 0.5}
    texts = [line[3] for line in lines]
    assert "x" * 1000 + "… [truncated 500 bytes]" in texts and "café" in texts and texts[-2:] == ["half a line", "more"]
    assert texts.count("y" * 999) == 1100 and "#runyard step=1 loss=1" not in texts
