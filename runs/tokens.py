"""A user's own API tokens (SPEC §3): issued with a name and an optional expiry,
listed without their secret, revoked by their user. The API, the console's token
page and `createtoken` all come through here."""

from datetime import timedelta

from django.db.models import QuerySet
from django.utils import timezone

from runs.models import ApiToken

NAME_MAX = 100
MAX_EXPIRY_DAYS = 3650


class TokenInputError(ValueError):
    def __init__(self, loc: str, message: str):
        super().__init__(message)
        self.loc = loc


def checked_name(name) -> str:
    if name is None:
        return ""
    if not isinstance(name, str):
        raise TokenInputError("name", "expected a string")
    name = name.strip()
    if len(name) > NAME_MAX:
        raise TokenInputError("name", f"at most {NAME_MAX} characters")
    return name


def checked_days(days) -> int | None:
    """Whole days from now until the token stops working; None: never."""
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int):
        raise TokenInputError("expires_in_days", "expected a whole number of days or null")
    if not 1 <= days <= MAX_EXPIRY_DAYS:
        raise TokenInputError("expires_in_days", f"must be between 1 and {MAX_EXPIRY_DAYS}, or null for no expiry")
    return days


def issue(user, name=None, expires_in_days=None) -> tuple[ApiToken, str]:
    """A new token for `user`; the secret is returned once and only its digest kept."""
    name, days = checked_name(name), checked_days(expires_in_days)
    expires_at = timezone.now() + timedelta(days=days) if days is not None else None
    return ApiToken.issue(user, name=name, expires_at=expires_at)


def tokens_of(user) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at", "-pk")


def revoke(user, token_id: int) -> bool:
    """Delete one of the user's own tokens; False when they hold none with that id."""
    deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
    return bool(deleted)
