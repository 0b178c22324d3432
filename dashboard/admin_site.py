"""/admin/ for staff and for team admins (SPEC §5).

Staff keep Django's own permissions. A team admin who is not staff gets in too,
and runs.admin shows them their own teams' members, runs, datasets and secrets,
and nothing else. dashboard/admin_config.py makes this the site of /admin/.
"""

from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError


def may_enter_admin(user) -> bool:
    from runs.access import administered_team_ids, is_present  # models load after this module

    return is_present(user) and (user.is_staff or bool(administered_team_ids(user)))


class TeamAdminAuthenticationForm(AdminAuthenticationForm):
    def confirm_login_allowed(self, user):
        AuthenticationForm.confirm_login_allowed(self, user)  # an inactive user is refused
        if not may_enter_admin(user):
            raise ValidationError(
                "This account is neither staff nor a team admin; the console is at /.", code="not_admin",
            )


class RunyardAdminSite(AdminSite):
    site_header = "Runyard administration"
    site_title = "Runyard admin"
    index_title = "Teams, runs, datasets and secrets"
    site_url = "/"
    login_form = TeamAdminAuthenticationForm

    def has_permission(self, request):
        return may_enter_admin(request.user)
