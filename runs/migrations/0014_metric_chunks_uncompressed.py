"""Metric chunks' packed columns are stored as they are, not compressed (PostgreSQL).

Packed float64 and int64 arrays hardly compress, yet PostgreSQL tried to (its default
`extended` storage): at a million points a second of ingest, most of the database's
time went into that. `external` keeps them out of line, uncompressed. Other databases
have no such setting; the migration does nothing there.
"""

from django.db import migrations

COLUMNS = ("steps", "values", "times", "summary", "summary_coarse")


def storage(kind: str):
    def alter(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name(apps.get_model("runs", "MetricChunk")._meta.db_table)
        columns = ", ".join(f"ALTER COLUMN {schema_editor.quote_name(name)} SET STORAGE {kind}" for name in COLUMNS)
        schema_editor.execute(f"ALTER TABLE {table} {columns}")
    return alter


class Migration(migrations.Migration):

    dependencies = [
        ("runs", "0013_reconcile_index"),
    ]

    operations = [
        migrations.RunPython(storage("EXTERNAL"), storage("EXTENDED")),
    ]
