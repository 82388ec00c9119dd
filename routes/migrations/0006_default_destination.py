from __future__ import annotations

import os

from django.conf import settings
from django.db import migrations

SETTING = "ESAROUTES_DELIVERY_MAX_MESSAGES_PER_CONNECTION"


def _messages_per_connection() -> int:
    """The Default entry's messages per connection: the global setting's value when set (it is replaced by this
    entry), else 50, brought into the entry's range 1-1,000."""
    value = getattr(settings, SETTING, None)
    if value is None:
        raw = os.environ.get(SETTING, "").strip()
        value = int(raw) if raw.isdigit() else 50
    return max(1, min(int(value), 1000))


def forwards(apps, schema_editor):
    DestinationControl = apps.get_model("routes", "DestinationControl")
    DestinationControl.objects.get_or_create(
        destination="default",
        defaults={"max_connections": 500, "max_messages_per_connection": _messages_per_connection()},
    )


class Migration(migrations.Migration):
    dependencies = [("routes", "0005_destinationcontrol")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
