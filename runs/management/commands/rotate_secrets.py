from django.core.management.base import BaseCommand, CommandError

from runs import team_secrets


class Command(BaseCommand):
    help = (
        "Re-encrypt every team secret and every run's stored mask with the newest key "
        "(the first of RUNYARD_SECRETS_KEY's comma-separated list). Afterwards the older "
        "keys can be dropped from the list."
    )

    def handle(self, **options):
        rotated, unreadable = team_secrets.rotate_all()
        self.stdout.write(f"re-encrypted {rotated} values with the newest key")
        if unreadable:
            for what in unreadable:
                self.stderr.write(f"cannot decrypt {what} with any configured key: left as it is")
            raise CommandError(f"{len(unreadable)} values could not be decrypted; keep the key they were made with in RUNYARD_SECRETS_KEY")
