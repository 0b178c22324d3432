"""What a run reports from inside (SPEC §4): metric values, progress, a summary.

A report is a line of the run's output that starts with `#runyard `, followed by
`name=value` fields: `step=` (a whole number), `progress=` (0 to 1) and metrics
(finite numbers); or by `summary ` and a JSON object of name to number or text
(the run's final figures: the latest value per name is kept). runs/inrun/runyard.py
writes them; a shell script can `echo` them. The log collector takes good reports out of the log and stores them in the
same transaction as the lines around them, so none is lost or doubled. A
malformed report stays in the log, is counted, and is never fatal.

The collector masks a line's secret values before it parses it (a secret in a
metric's name leaves a masked name, which is malformed), and a run's metric
names are capped (RUNYARD_METRIC_KEYS_MAX): a report with more metrics than the
cap, or one adding names past it, is malformed as a whole.
"""

import json
import math
import re
from dataclasses import dataclass, field

PREFIX = "#runyard"
METRIC_NAME = re.compile(r"[A-Za-z0-9_./-]{1,100}\Z")
# Runyard's own metrics (runs.system_metrics: sys/cpu_percent, ...): a run cannot report under it.
SYSTEM_PREFIX = "sys/"
MAX_STEP = 2**62
SUMMARY_WORD = "summary"
SUMMARY_TEXT_MAX = 1000
# Metric names known good (METRIC_NAME, not a system one): most reports repeat theirs.
_metric_names: set[str] = set()
_METRIC_NAMES_KEPT = 10_000


@dataclass
class Report:
    step: int | None = None
    progress: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, float | str] = field(default_factory=dict)


class Malformed(ValueError):
    pass


def is_report(text: str) -> bool:
    return text == PREFIX or text.startswith(PREFIX + " ")


def parse(text: str, max_metrics: int | None = None) -> Report:
    """The report a `#runyard ...` line holds; Malformed says what is wrong with it."""
    body = text[len(PREFIX):].strip()
    if body.split(None, 1)[:1] == [SUMMARY_WORD]:
        return Report(summary=parse_summary(body[len(SUMMARY_WORD):], max_metrics))
    report = Report()
    seen: set[str] = set()
    for token in body.split():
        if max_metrics is not None and len(report.metrics) > max_metrics:
            raise Malformed(f"more than {max_metrics} metrics in one report")
        name, sep, value = token.partition("=")
        if not sep or not name:
            raise Malformed(f"expected name=value, got {token!r}")
        if name in seen:
            raise Malformed(f"{name} given twice")
        seen.add(name)
        if name == "step":
            if not value.isdecimal() or int(value) > MAX_STEP:  # as re's \d+: any decimal digits
                raise Malformed(f"step must be a whole number, got {value!r}")
            report.step = int(value)
        elif name == "progress":
            number = _finite(name, value)
            if not 0 <= number <= 1:
                raise Malformed(f"progress must be between 0 and 1, got {value}")
            report.progress = number
        elif name in _metric_names:  # a name seen before and good (the usual report)
            report.metrics[name] = _finite(name, value)
        elif name.startswith(SYSTEM_PREFIX):
            raise Malformed(f"{name!r}: names under {SYSTEM_PREFIX} are Runyard's own system metrics")
        elif METRIC_NAME.match(name):
            report.metrics[name] = _finite(name, value)
            if len(_metric_names) >= _METRIC_NAMES_KEPT:
                _metric_names.clear()
            _metric_names.add(name)
        else:
            raise Malformed(f"{name!r} is not a metric name (letters, digits, _ . / -)")
    if max_metrics is not None and len(report.metrics) > max_metrics:
        raise Malformed(f"more than {max_metrics} metrics in one report")
    if report.progress is None and not report.metrics:
        raise Malformed("nothing reported")
    return report


# The usual report, `#runyard step=10 loss=0.31 acc=0.9`: a step and plain numbers;
# most often a single one.
_STEP_DIGITS, _NAME_CHARS, _NUMBER_CHARS = 18, 100, 40  # the longest of each these readings take
_STEP = rf"\d{{1,{_STEP_DIGITS}}}"
_NAME = rf"[A-Za-z0-9_./-]{{1,{_NAME_CHARS}}}"
_NUMBER = rf"[-+.0-9eE]{{1,{_NUMBER_CHARS}}}"
_PLAIN_ONE = re.compile(rf"#runyard step=({_STEP}) ({_NAME})=({_NUMBER})")
_PLAIN = re.compile(rf"#runyard step=({_STEP})((?: {_NAME}={_NUMBER})+)")


_PLAIN_ONE_LINE = re.compile(_PLAIN_ONE.pattern.encode() + rb"\n")


def plain_metric(line: bytes, known: set[str]) -> tuple[int, str, float] | None:
    """The step, name and value of the commonest report, one metric, as a line of
    output comes (ASCII, one newline at its end): what plain_metrics reads of it,
    without the text or a dict."""
    one = _PLAIN_ONE_LINE.fullmatch(line)
    if one is None:
        return None
    name = one[2].decode()
    try:
        value = float(one[3])
    except ValueError:
        return None
    if name not in known or value - value != 0.0:  # not finite: inf - inf and nan - nan are nan
        return None
    return int(one[1]), name, value


# A run of such lines, each whole, all of one metric (the name matched again by reference).
_PLAIN_ONE_LINES = re.compile(
    rf"#runyard step={_STEP} (?P<name>{_NAME})={_NUMBER}\n(?:#runyard step={_STEP} (?P=name)={_NUMBER}\n)*".encode())
PLAIN_ONE_MAX_BYTES = len("#runyard step= =\n") + _STEP_DIGITS + _NAME_CHARS + _NUMBER_CHARS  # the longest line _PLAIN_ONE takes


def plain_metric_lines(lines: bytes, known: set[str]) -> tuple[str, list[int], list[float]] | None:
    """plain_metric for many lines at once (`lines`: whole lines, joined), where every
    one is the commonest report of one and the same known metric with a finite value:
    its name, and the steps and values in order. None where any line is not, or a
    value is no number: each line is then read alone. A collector's batch of reports
    is read here by a regex and a few passes over its bytes, not line by line in Python."""
    whole = _PLAIN_ONE_LINES.fullmatch(lines)
    if whole is None or (name := whole["name"].decode()) not in known:
        return None
    # Each line is "#runyard step=S NAME=V\n": made "S\nV\n", the fields are every other piece.
    fields = lines.replace(b" " + whole["name"] + b"=", b"\n").replace(PREFIX.encode() + b" step=", b"").split(b"\n")
    fields.pop()  # what follows the last newline
    try:
        values = list(map(float, fields[1::2]))
    except ValueError:
        return None
    total = sum(values)
    if total - total != 0.0:  # an inf or a nan among them (or a sum past the largest float: read alone)
        return None
    return name, list(map(int, fields[0::2])), values


def plain_metrics(text: str, known: set[str], max_metrics: int) -> tuple[int, dict[str, float]] | None:
    """The step and metrics of the usual report, when every name in it is in `known`
    (names the run reported before, so good ones) and every value a finite number:
    what parse() would give, without its checks. None for any other line: parse()
    then reads it, and says what is wrong, if anything is. `text` is ASCII."""
    one = _PLAIN_ONE.fullmatch(text)
    if one is not None:
        step, name, value = one.groups()
        pairs = [(name, value)]
    else:
        match = _PLAIN.fullmatch(text)
        if match is None:
            return None
        step = match[1]
        pairs = [pair.partition("=")[::2] for pair in match[2][1:].split(" ")]
    metrics = {}
    for name, value in pairs:
        if name not in known:
            return None
        try:
            number = float(value)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        metrics[name] = number
    if len(metrics) != len(pairs) or len(metrics) > max_metrics:  # a name twice, or more than the cap
        return None
    return int(step), metrics


def parse_summary(text: str, max_keys: int | None = None) -> dict[str, float | str]:
    """`{"best_acc": 0.93, "arch": "resnet50"}`: names as metric names, values
    finite numbers or text (true/false count as text, so nothing is guessed)."""
    try:
        values = json.loads(text)
    except ValueError:
        raise Malformed("summary expects a JSON object, e.g. {\"best_acc\": 0.93}") from None
    if not isinstance(values, dict) or not values:
        raise Malformed("summary expects a non-empty JSON object of name to number or text")
    if max_keys is not None and len(values) > max_keys:
        raise Malformed(f"more than {max_keys} names in one summary")
    summary: dict[str, float | str] = {}
    for name, value in values.items():
        if not METRIC_NAME.match(name):
            raise Malformed(f"{name!r} is not a summary name (letters, digits, _ . / -)")
        if isinstance(value, bool) or value is None:
            summary[name] = json.dumps(value)
        elif isinstance(value, (int, float)):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise Malformed(f"{name} must be a finite number, got {value}")
            # A whole number JSON can hold exactly stays whole (an epoch count, not 3.0).
            summary[name] = value if isinstance(value, int) and abs(value) <= 2**53 else number
        elif isinstance(value, str):
            if len(value) > SUMMARY_TEXT_MAX:
                raise Malformed(f"{name} is longer than {SUMMARY_TEXT_MAX} characters")
            summary[name] = value
        else:
            raise Malformed(f"{name} must be a number or text, got {type(value).__name__}")
    return summary


def _finite(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise Malformed(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise Malformed(f"{name} must be a finite number, got {value}")
    return number


# Progress and its ETA --------------------------------------------------------

PROGRESS_SAMPLES = 30
ETA_WINDOW_SECONDS = 300.0


def add_progress_sample(samples: list, at: float, progress: float) -> list:
    """The recent (time, progress) pairs the ETA is computed from. Progress that
    goes back (a new phase) starts the history over."""
    if samples and progress < samples[-1][1]:
        samples = []
    return (samples + [[round(at, 3), progress]])[-PROGRESS_SAMPLES:]


def eta_seconds(samples: list, now: float) -> float | None:
    """Seconds left at the recent rate of progress; None until it can be told."""
    if not samples:
        return None
    last_at, last = samples[-1]
    if last >= 1:
        return 0.0
    recent = [s for s in samples if s[0] >= last_at - ETA_WINDOW_SECONDS]
    if len(recent) < 2:
        recent = samples[-2:]
    if len(recent) < 2:
        return None
    first_at, first = recent[0]
    if last_at - first_at < 0.5 or last <= first:
        return None
    rate = (last - first) / (last_at - first_at)
    return max(0.0, (1 - last) / rate - max(0.0, now - last_at))


def progress_still_since(samples: list) -> float | None:
    """When progress last moved: the first of the trailing samples that hold the
    last value. Samples are capped, so when they all hold it, it moved at or
    before the oldest (the answer is never later than the truth)."""
    if not samples:
        return None
    last = samples[-1][1]
    since = samples[-1][0]
    for at, value in reversed(samples):
        if value != last:
            break
        since = at
    return since


def is_stalled(samples: list, now: float, stalled_seconds: float) -> bool:
    """Progress was reported, is short of done, and has not moved for stalled_seconds."""
    left = stalls_in(samples, now, stalled_seconds)
    return left is not None and left <= 0


def stalls_in(samples: list, now: float, stalled_seconds: float) -> float | None:
    """Seconds until the run counts as stalled if its progress does not move
    (0 or less: it is); None where it cannot stall (nothing reported, or done)."""
    since = progress_still_since(samples)
    if since is None or samples[-1][1] >= 1:
        return None
    return since + stalled_seconds - now
