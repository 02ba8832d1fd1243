"""Leases: named slots held across transactions without a database session (the HR sync, target slots)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('syncservice', '0012_orphan_action'),
    ]

    operations = [
        migrations.CreateModel(
            name='Lease',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('scope', models.CharField(max_length=64, verbose_name='范围')),
                ('slot', models.PositiveIntegerField(default=0, verbose_name='槽位')),
                ('holder', models.CharField(blank=True, default='', max_length=128, verbose_name='持有者')),
                ('acquired_at', models.DateTimeField(blank=True, null=True, verbose_name='获取时间')),
                ('expires_at', models.DateTimeField(blank=True, null=True, verbose_name='到期时间')),
            ],
            options={
                'verbose_name': '租约',
                'verbose_name_plural': '租约',
                'constraints': [models.UniqueConstraint(fields=('scope', 'slot'), name='lease_scope_slot_unique')],
            },
        ),
    ]
