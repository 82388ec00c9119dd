"""The roles are granted the destination controls' permissions (as for routes: operators change them)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations


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
        ("routes", "0006_default_destination"),
        ("esaroutes", "0001_roles"),
    ]
    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
