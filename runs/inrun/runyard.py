"""Report metrics and progress from inside a Runyard run.

    import runyard
    runyard.log({"loss": 0.31, "acc": 0.9}, step=10)
    runyard.progress(0.42)          # a fraction, 0.0 to 1.0
    runyard.summary({"best_acc": 0.93, "arch": "resnet50"})   # the run's final figures

Standard library only, for any Python 3.8 or newer; Runyard puts this file on
every run's PYTHONPATH. Reports travel on the run's standard output as lines
that the console takes out of the log:

    #runyard step=10 loss=0.31 acc=0.9
    #runyard progress=0.42
    #runyard summary {"best_acc": 0.93, "arch": "resnet50"}

so a shell script reports with `echo`. Metric names are letters, digits and
`_ . / -`; values are finite numbers. A summary keeps the latest value per name
(a finite number or text of up to 1000 characters). The console skips and counts a malformed
report and keeps its line in the log, where you can see it; reporting never
raises.
"""

import json
import math
import os
import re
import sys

__all__ = ["log", "progress", "summary"]

_NAME = re.compile(r"[A-Za-z0-9_./-]{1,100}\Z")
_RESERVED = ("step", "progress")


def _emit(fields):
    _emit_line("#runyard " + " ".join("%s=%s" % item for item in fields) + "\n")


def _emit_line(line):
    # Straight to the file descriptor: not held back by Python's buffer, and one
    # write, so the line is never cut by other output.
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        os.write(1, line.encode("utf-8", "replace"))
    except OSError:
        pass


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def log(metrics, step=None):
    """Record metric values (a dict of name to number), optionally at a step."""
    fields = []
    if step is not None:
        fields.append(("step", step))
    try:
        items = list(dict(metrics).items())
    except (TypeError, ValueError):
        _warn("runyard.log expects a dict of name to number, got %r" % (metrics,))
        return
    for name, value in items:
        name = str(name)
        if not _NAME.match(name) or name in _RESERVED:
            _warn("runyard.log: %r is not a metric name (letters, digits, _ . / -)" % name)
        elif name.startswith("sys/"):
            _warn("runyard.log: %r: names under sys/ are Runyard's own system metrics" % name)
        number = _number(value)
        # What is wrong is still reported: the console counts it and shows the line.
        fields.append((name, repr(number) if number is not None else str(value).replace(" ", "_")))
    if fields:
        _emit(fields)


def progress(fraction):
    """Record how far the run is, from 0.0 to 1.0; the console computes an ETA."""
    number = _number(fraction)
    _emit([("progress", repr(number) if number is not None else str(fraction).replace(" ", "_"))])


def summary(values):
    """Record the run's final figures (a dict of name to number or text); a name
    reported again replaces its value."""
    try:
        items = dict(values)
    except (TypeError, ValueError):
        _warn("runyard.summary expects a dict of name to number or text, got %r" % (values,))
        return
    cleaned = {}
    for name, value in items.items():
        name = str(name)
        if not _NAME.match(name):
            _warn("runyard.summary: %r is not a name (letters, digits, _ . / -)" % name)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            value = str(value)
        elif isinstance(value, float) and not math.isfinite(value):
            _warn("runyard.summary: %s is not a finite number" % name)
        cleaned[name] = value
    if cleaned:
        # One line whatever the text holds: json.dumps escapes newlines.
        _emit_line("#runyard summary " + json.dumps(cleaned, ensure_ascii=False) + "\n")


def _warn(message):
    try:
        sys.stderr.write(message + "\n")
    except Exception:
        pass
