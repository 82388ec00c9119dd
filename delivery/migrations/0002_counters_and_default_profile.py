from __future__ import annotations

from django.db import migrations


def forwards(apps, schema_editor):
    IdCounter = apps.get_model("delivery", "IdCounter")
    BounceProfile = apps.get_model("delivery", "BounceProfile")
    for name in ("icid", "dcid"):
        IdCounter.objects.get_or_create(name=name)
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"CREATE SEQUENCE IF NOT EXISTS esaroutes_{name}_seq")
    BounceProfile.objects.get_or_create(name="Default")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for name in ("icid", "dcid"):
            schema_editor.execute(f"DROP SEQUENCE IF EXISTS esaroutes_{name}_seq")


class Migration(migrations.Migration):
    dependencies = [("delivery", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
