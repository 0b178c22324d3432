"""Small formatting filters the run pages share."""

from django import template
from django.utils.safestring import mark_safe


register = template.Library()


@register.filter
def percent(fraction) -> str:
    """0.4231 -> "42%"; nothing for an unknown progress."""
    if fraction is None:
        return ""
    return f"{percent_value(fraction)}%"


@register.filter
def percent_value(fraction) -> int:
    """0.4231 -> 42: the number `percent` shows, for a <progress max="100">."""
    return int(float(fraction) * 100)


@register.filter
def time_left(seconds) -> str:
    """An ETA as people say it: "about 3 min 10 s left"."""
    if seconds is None:
        return ""
    seconds = int(round(float(seconds)))
    if seconds < 1:
        return "finishing"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        text = f"{hours} h {minutes} min"
    elif minutes:
        text = f"{minutes} min {secs} s" if minutes < 10 else f"{minutes} min"
    else:
        text = f"{secs} s"
    return f"about {text} left"


@register.filter
def progress_text(run) -> str:
    """A running run's reported progress in words: "42% done · about 3 min left"."""
    if run.progress is None:
        return ""
    if run.stalled:
        return f"{percent(run.progress)} done · stalled: it has not moved lately"
    eta = run.eta_seconds
    return f"{percent(run.progress)} done" + (f" · {time_left(eta)}" if eta is not None else "")


# A browser timer cannot wait longer than this (2^31 - 1 ms): it would fire at once.
LONGEST_TIMER_SECONDS = 2**31 // 1000 - 1


@register.filter
def stall_trigger(run) -> str:
    """The hx-trigger clause that reads a running run's fragment again a second after
    its progress would turn it stalled: no message says so. "" where it cannot stall."""
    left = run.stalls_in_seconds
    if left is None or left <= 0:
        return ""
    return f", load delay:{min(int(left) + 1, LONGEST_TIMER_SECONDS)}s"


@register.filter
def usage_team(user) -> str:
    """The first team, by name, that the user administers (its usage page is in the
    nav), or "": one query, on every page."""
    from runs.access import administering

    return administering(user).order_by("team__name").values_list("team__name", flat=True).first() or ""


@register.simple_tag
def run_badge(run):
    """A run's status badge: the markup the runs list writes (dashboard/run_rows.py)."""
    from dashboard.run_rows import badge_html

    return mark_safe(badge_html(run))


@register.simple_tag
def run_progress(run, id_prefix: str):
    """A running run's progress bar and its words, as the runs list writes them."""
    from dashboard.run_rows import progress_html

    return mark_safe(progress_html(run, id_prefix))
