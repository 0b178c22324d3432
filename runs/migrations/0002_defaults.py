import secrets
from decimal import Decimal

from django.db import migrations


def create_defaults(apps, schema_editor):
    apps.get_model("runs", "ResourcePreset").objects.get_or_create(
        name="cpu-small", defaults={"cpus": Decimal("1"), "memory_mb": 2048, "gpus": 0, "credits_per_hour": Decimal("1")}
    )
    Installation = apps.get_model("runs", "Installation")
    if not Installation.objects.exists():
        Installation.objects.create(instance_id=secrets.token_hex(4))
    apps.get_model("runs", "Team").objects.get_or_create(name="default")


class Migration(migrations.Migration):
    dependencies = [("runs", "0001_initial")]
    operations = [migrations.RunPython(create_defaults, migrations.RunPython.noop)]
