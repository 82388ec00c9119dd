"""Rows that made an open relay, saved before every writer met the models' rules: a Recipient Access Table rule
`ALL = ACCEPT` becomes REJECT, a relay network that is every address (`/0`) is removed; each change is audited
(actor "migration"), so what was there stays on record."""

from __future__ import annotations

import ipaddress

from django.db import migrations
from django.utils import timezone


def forwards(apps, schema_editor):
    AuditEntry = apps.get_model("routes", "AuditEntry")
    now = timezone.now()

    def audit(action, object_type, object_repr, before, after):
        AuditEntry.objects.create(
            at=now,
            actor_name="migration",
            action=action,
            object_type=object_type,
            object_repr=object_repr,
            before=before,
            after=after,
        )

    for rule in apps.get_model("routes", "RecipientAccessRule").objects.filter(domain="ALL", action="accept"):
        before = {"domain": rule.domain, "action": rule.action, "comment": rule.comment}
        rule.action = "reject"
        rule.save(update_fields=["action", "updated_at"])
        audit("update", "RecipientAccessRule", "ALL REJECT", before, {**before, "action": "reject"})
    for relay in apps.get_model("routes", "RelayNetwork").objects.all():
        try:
            every = ipaddress.ip_network(relay.network, strict=False).prefixlen == 0
        except ValueError:
            continue
        if every:
            audit("delete", "RelayNetwork", relay.network, {"network": relay.network, "comment": relay.comment}, None)
            relay.delete()


class Migration(migrations.Migration):
    dependencies = [("routes", "0002_defaults")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
