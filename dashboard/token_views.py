"""The API tokens page (/account/tokens/): a signed-in user lists, creates and
revokes their own tokens (runs.tokens). A new token is shown once, in the answer
to the POST that made it; only its digest is kept."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from runs import tokens

EXPIRY_CHOICES = [("", "never"), ("7", "in 7 days"), ("30", "in 30 days"), ("90", "in 90 days"), ("365", "in a year")]


@login_required
@require_http_methods(["GET", "POST"])
def tokens_page(request):
    new_token, errors, status = None, [], 200
    form = {"name": "", "expires_in_days": "30"}
    if request.method == "POST":
        form = {"name": request.POST.get("name", ""), "expires_in_days": request.POST.get("expires_in_days", "")}
        try:
            days = int(form["expires_in_days"]) if form["expires_in_days"] else None
        except ValueError:
            days = "not a number"
        try:
            row, secret = tokens.issue(request.user, form["name"], days)
        except tokens.TokenInputError as exc:
            errors, status = [{"loc": exc.loc, "msg": str(exc)}], 400
        else:
            new_token, status = {"row": row, "secret": secret}, 201
            form = {"name": "", "expires_in_days": "30"}
    return render(request, "dashboard/tokens.html", {
        "tokens": tokens.tokens_of(request.user), "new_token": new_token, "errors": errors,
        "form": form, "expiry_choices": EXPIRY_CHOICES,
    }, status=status)


@login_required
@require_POST
def token_revoke(request, token_id: int):
    if not tokens.revoke(request.user, token_id):
        raise Http404("You have no token with this number.")
    messages.success(request, "Token revoked: it no longer works.")
    return redirect("account-tokens")
