"""Suspended destination domains (suspenddel/resumedel); the roles are granted the new model's permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations, models


def grant(apps, schema_editor):
    # As esaroutes/0001_roles: permissions are created after migrate, so create them now for the groups to hold.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from esaroutes import roles

    roles.sync_groups(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0003_possible_delivery"),
        ("esaroutes", "0001_roles"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeliverySuspension",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("domain", models.CharField(help_text='IDNA, lower-case, or "ALL"', max_length=255, unique=True)),
                ("suspended_at", models.DateTimeField()),
                ("suspended_by", models.CharField(blank=True, max_length=200)),
            ],
            options={
                "ordering": ["domain"],
            },
        ),
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
