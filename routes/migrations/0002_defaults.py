from __future__ import annotations

from django.db import migrations


def forwards(apps, schema_editor):
    apps.get_model("routes", "RouteTableVersion").objects.get_or_create(pk=1)
    RelayNetwork = apps.get_model("routes", "RelayNetwork")
    for network, comment in (("127.0.0.0/8", "loopback"), ("::1/128", "loopback")):
        RelayNetwork.objects.get_or_create(network=network, defaults={"comment": comment})


class Migration(migrations.Migration):
    dependencies = [("routes", "0001_initial")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
