"""Per-client throttle rates, and the database cache table inbound rate limiting counts in."""

from django.core.management import call_command
from django.db import migrations, models

import syncservice.models


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", "aps_throttle_cache", database=schema_editor.connection.alias, verbosity=0)


def drop_cache_table(apps, schema_editor):
    schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name('aps_throttle_cache')}")


class Migration(migrations.Migration):

    dependencies = [
        ('syncservice', '0003_request_cancel'),
    ]

    operations = [
        migrations.AlterField(
            model_name='apiclient',
            name='throttle_rate',
            field=models.CharField(blank=True, default='', help_text="Requests allowed, e.g. '120/min' or '10/s'; empty: the default (API_THROTTLE_RATE).", max_length=32, validators=[syncservice.models.validate_throttle_rate], verbose_name='限流速率'),
        ),
        migrations.RunPython(create_cache_table, drop_cache_table),
    ]
