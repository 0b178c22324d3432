"""A row of the runs list, as HTML, written in Python.

Fifty rows through the template engine (a row, its badge, its progress bar: some
forty variable lookups, localized numbers and reversed URLs each) cost the list
page several times what reading its runs does; the same markup formatted here
costs a fraction. The badge and the progress bar are written here once: the
run's header and the comparison render them through the `run_badge` and
`run_progress` tags (templates/dashboard/_badge.html, _run_progress.html).

A row reads itself again (run_row) when live_runs.js says its run changed; pending,
also when the team's queue moves; running, when its progress would turn it stalled.
"""

from decimal import ROUND_HALF_UP, Decimal
from html import escape as escape_text
from urllib.parse import quote

from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe

from dashboard.templatetags.runyard import percent, percent_value, progress_text, stall_trigger, time_left
from django.utils.timezone import template_localtime

from runs.models import Run, Status

LABELS = {value: str(label) for value, label in Status.choices}


def escape(value) -> str:
    """django.utils.html.escape's characters and output, without its lazy-text wrapper
    (some four hundred calls a page): a row is marked safe whole, once."""
    return escape_text(str(value))


def _whole(seconds: float) -> str:
    """`|floatformat:0`: rounded half up."""
    return str(Decimal(repr(seconds)).quantize(Decimal(1), ROUND_HALF_UP))


def badge_html(run: Run) -> str:
    """A run's status badge; its title says progress, time left and why."""
    display = escape(LABELS.get(run.status, run.status))
    status = escape(run.status)
    title = display
    if run.progress is not None:
        title += f" · {percent(run.progress)} done"
    eta = run.eta_seconds
    if eta is not None:
        title += f" · {time_left(eta)}"
    if run.status_reason:
        title += f" · {escape(run.status_reason)}"
    html = f'<span class="badge status-{status}" data-status="{status}"\n      title="{title}">{display}</span>'
    if run.stalled:
        html += ' <span class="badge stalled" data-stalled title="Running, but its reported progress has not moved lately">stalled</span>'
    return html + "\n"


def progress_html(run: Run, id_prefix: str) -> str:
    """A running run's reported progress: a bar Tab reaches, described by the words beside it."""
    if run.status != Status.RUNNING or run.progress is None:
        return ""
    key = f"{id_prefix}{run.pk}"
    return (f'<span class="run-progress">\n'
            f'  <progress id="{key}" max="100" value="{percent_value(run.progress)}" tabindex="0"\n'
            f'            aria-label="Progress of run #{run.pk}" aria-describedby="{key}-text"></progress>\n'
            f'  <span id="{key}-text">{escape(progress_text(run))}</span>\n'
            f'</span>\n')


def links() -> tuple[str, str]:
    """The addresses of a run's row and its page, "{}" for its id: reversed once a page."""
    return (reverse("run-row", args=[0]).replace("/0/", "/{}/"), reverse("run-summary", args=[0]).replace("/0/", "/{}/"))


def row_html(run: Run, row_query: str = "", urls: tuple[str, str] | None = None) -> SafeString:
    """One <tr> of the runs list: the run's `column_values` and `queue_position` set already."""
    pk = run.pk
    row_url, page_url = urls or links()
    trigger = "run:status, run:waiting, run:progress"
    if run.status == Status.PENDING:
        trigger += ", run:queue from:body"
    trigger += escape(stall_trigger(run))
    waiting = ""
    if run.status == Status.PENDING and run.status_reason:
        place = f" · #{run.queue_position} in the team's queue" if getattr(run, "queue_position", None) else ""
        waiting = f'<div class="muted small waiting">{escape(run.status_reason)}{place}</div>'
    reproduces = ""
    if run.reproduced_from_id:
        source = run.reproduced_from_id
        reproduces = f' <span class="muted" title="reproduces #{source}">↻{source}</span>'
    tags = "".join(f'<a class="tag" href="?tag={escape(quote(str(tag), safe="/"))}">{escape(tag)}</a> ' for tag in run.tags)
    duration = run.duration_seconds
    duration_text = f"{_whole(duration)} s" if duration is not None else "—"
    created = template_localtime(run.created_at)
    values = "".join(f'<td class="num metric-col">{escape(value)}</td>' for value in getattr(run, "column_values", ()))
    again = row_url.format(pk) + (f"?{escape(row_query)}" if row_query else "")
    return mark_safe(
        f'<tr id="run-{pk}" data-run="{pk}" data-live-run="{pk}"\n'
        f'    hx-get="{again}" hx-swap="outerHTML" hx-sync="this:replace"\n'
        f'    hx-trigger="{trigger}">\n'
        f'  <td class="pick"><input type="checkbox" name="runs" value="{pk}" form="compare-form" id="pick-{pk}" hx-preserve aria-label="Compare run #{pk}"></td>\n'
        f'  <td class="num">{pk}</td>\n'
        f'  <td>{badge_html(run)}{progress_html(run, "progress-")}{waiting}</td>\n'
        f'  <td><a href="{page_url.format(pk)}" id="run-link-{pk}">{escape(run.name)}</a>{reproduces}</td>\n'
        f'  <td class="tags">{tags}</td>\n'
        f'  <td class="wide">{escape(run.owner.get_username())}</td>\n'
        f'  <td class="wide"><time datetime="{created.isoformat()}">{created.strftime("%Y-%m-%d %H:%M")}</time></td>\n'
        f'  <td class="wide num">{duration_text}</td>\n'
        f'  <td class="wide num">{run.credits:f}</td>\n'
        f'  {values}\n'
        f'</tr>\n'
    )
