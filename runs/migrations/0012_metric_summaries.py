# Chunks keep where they lie on each x axis and a summary of their points
# (runs/metrics.py). Chunks stored before have none (time_low is null) and are
# read point by point.
#
# On SQLite a row's columns are read in order, and a chunk's packed points fill
# many overflow pages: the small columns a chart reads first must come before
# them. The table is built again there with the points last (a copy, once).

from django.db import migrations, models

POINT_FIELDS = {
    "steps": models.BinaryField(help_text="int64 per point; -1 where no step was given"),
    "values": models.BinaryField(help_text="float64 per point"),
    "times": models.BinaryField(help_text="float64 unix time of each reporting line"),
}


def points_last_on_sqlite(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor._remake_table(apps.get_model("runs", "MetricChunk"))


class Migration(migrations.Migration):

    dependencies = [
        ('runs', '0011_list_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='metricchunk',
            name='step_low',
            field=models.BigIntegerField(help_text='lowest step given; null if none was', null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='step_high',
            field=models.BigIntegerField(help_text='highest step given; null if none was', null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='stepless',
            field=models.BooleanField(help_text='some point has no step (its x is its position)', null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='time_low',
            field=models.FloatField(help_text='earliest unix time; null for a chunk stored without summary', null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='time_high',
            field=models.FloatField(null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='summary_coarse',
            field=models.BinaryField(help_text='the same of each block of 256 points', null=True),
        ),
        migrations.AddField(
            model_name='metricchunk',
            name='summary',
            field=models.BinaryField(help_text='packed lowest and highest point of each block of 32 points', null=True),
        ),
        # The points last in the model's state, so that the table built again has them last.
        migrations.SeparateDatabaseAndState(state_operations=[
            *(migrations.RemoveField(model_name='metricchunk', name=name) for name in POINT_FIELDS),
            *(migrations.AddField(model_name='metricchunk', name=name, field=field, preserve_default=False)
              for name, field in POINT_FIELDS.items()),
        ]),
        migrations.RunPython(points_last_on_sqlite, migrations.RunPython.noop, elidable=True),
    ]
