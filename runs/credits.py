"""Credits (SPEC §1): a run is charged per second while initializing, running and
idle, at its preset's rate, and the charge is kept per status. A run's own split is
`Run.credits_by_status`; a team's usage is summed here in the database, grouped by
preset rate (and by user and month), so no run is loaded into Python.

A run's credits count in the month it began initializing.
"""

from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, Sum, Value
from django.db.models.functions import Coalesce, TruncMonth
from django.utils import timezone

from runs.models import Run

CENT = Decimal("0.0001")
CHARGED = ("initializing", "running", "idle")


def charged_spans() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each charged status: the timestamp that begins it, and those that may end it
    (the first one set; none set: it lasts until now)."""
    return {
        "initializing": ("initializing_at", ("started_at", "finished_at")),
        "running": ("started_at", ("stopping_at", "idle_at", "finished_at")),
        "idle": ("idle_at", ("finished_at",)),
    }


def credits_for(rate: Decimal, seconds: float) -> Decimal:
    return (rate * Decimal(seconds) / Decimal(3600)).quantize(CENT)


def _span_sums(now: datetime) -> dict:
    """SUM of each charged status's duration, as aggregate expressions."""
    sums = {}
    for status, (start, ends) in charged_spans().items():
        end = Coalesce(*[F(name) for name in ends], Value(now, output_field=DateTimeField()))
        sums[f"{status}_spent"] = Sum(ExpressionWrapper(end - F(start), output_field=DurationField()))
    return sums


def _credits_of(row: dict) -> dict[str, Decimal]:
    rate = row["preset__credits_per_hour"]
    return {status: credits_for(rate, max(0.0, (row[f"{status}_spent"] or timedelta(0)).total_seconds())) for status in CHARGED}


def _charged_runs(team_id: int):
    return Run.objects.filter(team_id=team_id, initializing_at__isnull=False)


def team_credits_by_status(team_id: int) -> dict[str, Decimal]:
    """Every credit the team's runs have used (live ones up to now), by status."""
    rows = _charged_runs(team_id).values("preset__credits_per_hour").annotate(**_span_sums(timezone.now()))
    used = _empty()
    for row in rows:
        for status, amount in _credits_of(row).items():
            used[status] += amount
    del used["credits"]
    return used


def team_credits_used(team_id: int) -> Decimal:
    return sum(team_credits_by_status(team_id).values(), Decimal("0.0000"))


def team_usage(team_id: int) -> dict:
    """The team's credits by month and user, each split by status, newest month first:
    {"total": {...}, "months": [{"month": date, "total": {...}, "users": [{"user", ...}]}]}
    where each {...} is {"initializing", "running", "idle", "credits"} in credits."""
    rows = (
        _charged_runs(team_id)
        .annotate(month=TruncMonth("initializing_at"))
        .values("month", "owner__username", "preset__credits_per_hour")
        .annotate(**_span_sums(timezone.now()))
    )
    months: dict = {}
    total = _empty()
    for row in rows:
        month = months.setdefault(row["month"], {"total": _empty(), "users": {}})
        user = month["users"].setdefault(row["owner__username"], _empty())
        for status, amount in _credits_of(row).items():
            for bucket in (user, month["total"], total):
                bucket[status] += amount
                bucket["credits"] += amount
    return {
        "total": total,
        "months": [
            {"month": key.date() if hasattr(key, "date") else key, "total": months[key]["total"],
             "users": [{"user": name, **amounts} for name, amounts in sorted(months[key]["users"].items())]}
            for key in sorted(months, reverse=True)
        ],
    }


def _empty() -> dict[str, Decimal]:
    return {key: Decimal("0.0000") for key in (*CHARGED, "credits")}
