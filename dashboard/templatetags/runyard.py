"""Small formatting filters the run pages share."""

from django import template

from dashboard.admin_site import may_enter_admin

register = template.Library()


@register.filter
def percent(fraction) -> str:
    """0.4231 -> "42%"; nothing for an unknown progress."""
    if fraction is None:
        return ""
    return f"{int(float(fraction) * 100)}%"


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


# Staff and team admins get the Admin link.
register.filter("may_enter_admin", may_enter_admin)


@register.filter
def usage_team(user) -> str:
    """The first team the user administers (its usage page is in the nav), or ""."""
    from runs.access import administered_team_ids
    from runs.models import Team

    team = Team.objects.filter(pk__in=administered_team_ids(user)).order_by("name").first()
    return team.name if team else ""
