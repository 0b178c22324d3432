"""Throttling of failed sign-ins and unknown API tokens, on django-axes.

Sign-ins (the login page and the admin's) count failures per username and client
address; after RUNYARD_LOGIN_FAILURE_LIMIT of them that pair is refused, even with
the right password, for RUNYARD_LOGIN_COOLOFF_MINUTES. Unknown bearer tokens count
per address, under a name no user can have, and lock out every bearer request from
that address the same way. axes keeps the counts in the database, so every console
process sees them.
"""

from datetime import timedelta

from axes.backends import AxesBackend
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

# Not a valid username (no spaces allowed): the bearer-token counter of an address.
TOKEN_ACCOUNT = "(api token)"


class SignInThrottle(AxesBackend):
    """axes' check, for authentications that come with a request. Without one
    (Django's test client's login(), a script) there is no address to count by,
    and no web sign-in does that: the login views pass their request.

    It refuses or passes, never signs in: ModelBackend, next in the list, checks
    the password. A whole backend (get_user too), as code that keeps the first
    backend's path in a session expects."""

    def authenticate(self, request: HttpRequest | None, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: behind RUNYARD_PROXY_COUNT proxies, the entry they added
    to X-Forwarded-For; entries further left were written by the client itself."""
    hops = settings.RUNYARD_PROXY_COUNT
    if hops:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR") or None  # None: a request made in code (test client's login())


def failure_limit(request: HttpRequest, credentials: dict | None) -> int:
    if credentials and credentials.get("username") == TOKEN_ACCOUNT:
        return settings.RUNYARD_TOKEN_FAILURE_LIMIT
    return settings.RUNYARD_LOGIN_FAILURE_LIMIT


def _retry_at(request: HttpRequest) -> tuple[timedelta, str]:
    # Every attempt during a lockout starts the cool-off again (axes' default), so
    # the wait counts from now.
    cool_off = get_cool_off(request) or timedelta(0)
    at = timezone.now() + cool_off
    return cool_off, at.strftime("%H:%M UTC")


def _minutes(cool_off: timedelta) -> str:
    minutes = max(1, round(cool_off.total_seconds() / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def lockout_response(request: HttpRequest, original_response=None, credentials: dict | None = None) -> HttpResponse:
    """The page a locked-out sign-in gets (axes calls this), saying when to retry."""
    cool_off, at = _retry_at(request)
    if not isinstance(credentials, dict):  # axes' async path passes the credentials one place early
        credentials = original_response if isinstance(original_response, dict) else None
    username = get_client_username(request, credentials) or ""
    context = {"username": username, "wait": _minutes(cool_off), "retry_at": at,
               "failure_limit": failure_limit(request, credentials)}
    response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response


def token_refusal(request: HttpRequest, valid: bool) -> str | None:
    """For the API's bearer authentication: None to go on, else why to answer 429.

    Called once per bearer request with whether the token is one Runyard issued
    (an expired or deactivated user's token is not a guess and does not count). An
    address past the limit is refused even with a good token: a guesser learns
    nothing. Refused requests do not count, so the lock ends a cool-off after the
    last unknown token, however often a client with a good one retries meanwhile.
    """
    credentials = {"username": TOKEN_ACCOUNT}
    if AxesProxyHandler.is_allowed(request, credentials):
        if valid:
            return None
        AxesProxyHandler.user_login_failed(sender=token_refusal, credentials=credentials, request=request)
        locked = getattr(request, "axes_locked_out", False)
        # The API answers for itself: axes' middleware must not turn this into the page.
        request.axes_locked_out = False
        if not locked:
            return None
    cool_off = get_cool_off(request) or timedelta(0)
    last = AccessAttempt.objects.filter(username=TOKEN_ACCOUNT, ip_address=request.axes_ip_address).aggregate(
        last=Max("attempt_time"))["last"]
    ends = (last or timezone.now()) + cool_off
    return (f"too many unknown tokens from your address: try again in {_minutes(ends - timezone.now())} "
            f"(after {ends.strftime('%H:%M UTC')})")
