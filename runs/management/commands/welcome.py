import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from runs.executors import default_executor_name
from runs.models import Role
from runs.private_files import write_private
from runs.services import join_default_team


class Command(BaseCommand):
    help = "Make sure an admin can sign in (creating one on a new install) and print the URL and login."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000/")

    def handle(self, url, **options):
        User = get_user_model()
        password_file = settings.VAR_DIR / "admin-password"
        admin = User.objects.filter(username="admin").first()
        if admin is None:
            password = secrets.token_urlsafe(12)
            admin = User.objects.create_superuser("admin", password=password)
            join_default_team(admin, Role.ADMIN)  # the one membership given without asking (SPEC §6)
            write_private(password_file, password + "\n")  # 0600 from the first byte
        if password_file.exists():
            login = f"admin / {password_file.read_text().strip()}"
        else:
            login = "admin / (the password you set)"
        self.stdout.write(
            f"\n  Runyard is starting at {url}\n"
            f"  Sign in:   {login}\n"
            f"  Executor:  {default_executor_name()}\n"
            f"  API token: .venv/bin/python manage.py createtoken admin\n"
        )
