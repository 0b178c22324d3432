from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from runs import tokens
from runs.models import Membership, Role, Team
from runs.services import DEFAULT_TEAM, join_default_team


class Command(BaseCommand):
    help = (
        "Create an API token for USERNAME, creating the user (and the team and the "
        "membership) if missing. Without --team, a user in no team joins the team "
        f"'{DEFAULT_TEAM}' as a member. The token is the last line of the output."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--superuser", action="store_true", help="make the user a superuser (staff)")
        parser.add_argument("--team", help="a team to put the user in (created if missing)")
        parser.add_argument("--role", choices=[r.value for r in Role], default=Role.MEMBER, help="role in --team")
        parser.add_argument("--name", default="", help="what to call the token, e.g. 'laptop'")
        parser.add_argument("--expires-days", type=int, default=None, help="the token stops working after this many days")

    @transaction.atomic
    def handle(self, username, superuser, team, role, name, expires_days, **options):
        User = get_user_model()
        if not username.strip():
            raise CommandError("USERNAME must not be empty")
        try:
            name, expires_days = tokens.checked_name(name), tokens.checked_days(expires_days)
        except tokens.TokenInputError as exc:
            raise CommandError(f"--{exc.loc.replace('expires_in_days', 'expires-days')}: {exc}") from None
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            self.stdout.write(f"created user {username} (set a password with: python manage.py changepassword {username})")
        if superuser and not (user.is_superuser and user.is_staff):
            user.is_superuser = user.is_staff = True
            self.stdout.write(f"{username} is a superuser")
        user.save()
        if team:
            team_obj, team_created = Team.objects.get_or_create(name=team)
            if team_created:
                self.stdout.write(f"created team {team}")
            Membership.objects.update_or_create(user=user, team=team_obj, defaults={"role": role})
            self.stdout.write(f"{username} is {role} of team {team}")
        elif not Membership.objects.filter(user=user).exists():
            join_default_team(user)
            self.stdout.write(f"{username} is member of team {DEFAULT_TEAM}")
        row, token = tokens.issue(user, name, expires_days)
        if row.expires_at:
            self.stdout.write(f"the token expires at {row.expires_at:%Y-%m-%d %H:%M} UTC")
        self.stdout.write(token)
