from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from runs.models import ApiToken, Membership, Role, Team
from runs.services import ensure_team


class Command(BaseCommand):
    help = (
        "Create an API token for USERNAME, creating the user (and the team and the "
        "membership) if missing. The token is the last line of the output."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--superuser", action="store_true", help="make the user a superuser (staff)")
        parser.add_argument("--team", help="a team to put the user in (created if missing)")
        parser.add_argument("--role", choices=[r.value for r in Role], default=Role.MEMBER, help="role in --team")

    @transaction.atomic
    def handle(self, username, superuser, team, role, **options):
        User = get_user_model()
        if not username.strip():
            raise CommandError("USERNAME must not be empty")
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
        else:
            ensure_team(user)
        _, token = ApiToken.issue(user)
        self.stdout.write(token)
