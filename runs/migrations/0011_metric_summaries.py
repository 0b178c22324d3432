# Chunks keep where they lie on each x axis and a summary of their points (runs/metrics.py).
# Chunks stored before have none and are read point by point.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('runs', '0010_credentials'),
    ]

    operations = [
        migrations.AddField(
            model_name='metricchunk',
            name='step_high',
            field=models.BigIntegerField(help_text='highest step given; null if none was', null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='step_low',
            field=models.BigIntegerField(help_text='lowest step given; null if none was', null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='stepless',
            field=models.BooleanField(default=False, help_text='some point has no step (its x is its position)'),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='summary',
            field=models.BinaryField(help_text='packed lowest and highest point of each block of 32 points', null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='summary_coarse',
            field=models.BinaryField(help_text='the same of each block of 256 points', null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='time_high',
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='time_low',
            field=models.FloatField(help_text='earliest unix time; null for a chunk stored without summary', null=True),
        ),
    ]
