from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("runs", "0004_run_reports")]

    operations = [
        migrations.AddField(
            model_name="team",
            name="max_running",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="name",
            field=models.CharField(blank=True, help_text="what the user calls it, e.g. 'laptop'", max_length=100),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(blank=True, help_text="empty: never expires", null=True),
        ),
        migrations.AddField(
            model_name="run",
            name="mask_ciphertext",
            field=models.BinaryField(blank=True, null=True),
        ),
    ]
