"""The runs list's chosen columns: metrics' last values and summary values.

`?columns=loss,summary:best_acc&sort=-loss`: a metric by its name, a summary
value as `summary:NAME` (metric names hold no `:`, so the two never collide).
Both read a JSON field of the run (Run.metrics_last, Run.summary), kept by the
log collector with the reports, so the list shows and sorts them without
reading any metric series.
"""

from dataclasses import dataclass

from django.db.models.fields.json import KeyTransform

from runs.reports import METRIC_NAME

MAX_COLUMNS = 8
SUMMARY_PREFIX = "summary:"


@dataclass(frozen=True)
class Column:
    name: str  # as written in the URL
    field: str  # "metrics_last" or "summary"
    key: str

    @property
    def label(self) -> str:
        return self.name

    def value(self, run):
        return getattr(run, self.field).get(self.key)

    def ordering(self, descending: bool):
        value = KeyTransform(self.key, self.field)
        # Runs without the value go last either way.
        return value.desc(nulls_last=True) if descending else value.asc(nulls_last=True)


def parse_columns(text: str) -> tuple[list[Column], list[str]]:
    """The columns asked for, once each, and a note for each name that is not one."""
    columns, notes = [], []
    names = [piece.strip() for piece in text.split(",") if piece.strip()]
    for name in names[:MAX_COLUMNS * 2]:  # a note for each, within reason
        if any(column.name == name for column in columns):
            continue
        key = name[len(SUMMARY_PREFIX):] if name.startswith(SUMMARY_PREFIX) else name
        if not METRIC_NAME.match(key):
            notes.append(f"“{name[:60]}” is not a metric or summary name (letters, digits, _ . / -), so it is not shown.")
            continue
        if len(columns) == MAX_COLUMNS:
            notes.append(f"At most {MAX_COLUMNS} columns: “{name[:60]}” is not shown.")
            continue
        columns.append(Column(name, "summary" if name.startswith(SUMMARY_PREFIX) else "metrics_last", key))
    return columns, notes


def sort_column(sort: str, columns: list[Column]) -> tuple[Column | None, bool]:
    """`loss` sorts ascending, `-loss` descending; only a shown column sorts."""
    descending = sort.startswith("-")
    name = sort[1:] if descending else sort
    return next((column for column in columns if column.name == name), None), descending


def suggestions(runs) -> list[str]:
    """Column names the runs on the page could show: their metrics and summary names."""
    names = {key for run in runs for key in run.metrics_last}
    names |= {SUMMARY_PREFIX + key for run in runs for key in run.summary}
    return sorted(names)
