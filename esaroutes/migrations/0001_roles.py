"""The four operator roles as groups with permissions (see esaroutes.roles)."""

from __future__ import annotations

from django.contrib.auth.management import create_permissions
from django.db import migrations


def forwards(apps, schema_editor):
    # Permissions are normally created after migrate (post_migrate); create them now so the groups can hold them.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    from esaroutes import roles

    roles.sync_groups(apps)


def backwards(apps, schema_editor):
    from esaroutes import roles

    apps.get_model("auth", "Group").objects.filter(name__in=roles.ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("routes", "0002_defaults"),
        ("delivery", "0002_counters_and_default_profile"),
    ]
    operations = [migrations.RunPython(forwards, backwards)]
