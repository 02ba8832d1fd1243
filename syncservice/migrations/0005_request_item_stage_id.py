"""The stages' item index gains `id`: a batch takes one request's items in id order and stops early."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('syncservice', '0004_throttling'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='accountcreationrequestitem',
            name='request_item_stage',
        ),
        migrations.AddIndex(
            model_name='accountcreationrequestitem',
            index=models.Index(fields=['status', 'request', 'id'], name='request_item_stage'),
        ),
    ]
