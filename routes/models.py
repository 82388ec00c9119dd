"""Configuration: SMTP routes and their destination hosts, outgoing auth profiles, inbound access rules, audit.

Receiving domains are stored normalised (lower-case IDNA; `.partial` keeps its dot; the default route is `ALL`)
by `routes.domains`; every write goes through `routes.services`, which validates, audits and bumps the route
table version in one transaction.

The access tables' rules live in their models' `clean()` (which normalises, then checks), so a Django admin
ModelForm (through `full_clean`) and `routes.access.services` (which calls `full_clean` before every save) refuse
the same values with the same message at the same field: there is no second copy of a rule in a form.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django_stubs_ext.db.models import TypedModelMeta

from esaroutes.models import Timestamped
from routes import destinations, domains

OPEN_RELAY_MESSAGE = "Accepting ALL domains makes this an open relay for every client. Refused."


class AuthProfile(Timestamped):
    """Credentials for SMTP AUTH towards a route's hosts. The password is encrypted at rest, never shown back."""

    name = models.CharField(max_length=64, unique=True)
    username = models.CharField(max_length=255)
    password_encrypted = models.TextField(blank=True, editable=False)

    class Meta(TypedModelMeta):
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Route(Timestamped):
    class Special(models.TextChoices):
        NONE = "", "Destination hosts"
        USEDNS = "usedns", "USEDNS (deliver by MX records)"
        DEVNULL = "devnull", "/dev/null (accept and drop)"

    class TLS(models.TextChoices):
        OFF = "off", "Off"
        OPPORTUNISTIC = "opportunistic", "Opportunistic (preferred)"
        REQUIRED = "required", "Required"
        REQUIRED_VERIFY = "required_verify", "Required and verified"

    DEFAULT_DOMAIN = "ALL"

    domain = models.CharField(max_length=255, help_text="example.com, .example.com or ALL")
    sender = models.CharField(
        max_length=320,
        blank=True,
        default="",
        help_text="Envelope sender pattern: alerts@app.example, app.example, .app.example or <>; empty for every "
        "sender",
    )
    special = models.CharField(max_length=16, choices=Special.choices, default=Special.NONE, blank=True)
    auth_profile = models.ForeignKey(
        AuthProfile, null=True, blank=True, on_delete=models.PROTECT, related_name="routes"
    )
    bounce_profile = models.ForeignKey(
        "delivery.BounceProfile", null=True, blank=True, on_delete=models.PROTECT, related_name="routes"
    )
    tls = models.CharField(max_length=16, choices=TLS.choices, default=TLS.OPPORTUNISTIC)
    defer_on_4xx = models.BooleanField(
        default=False,
        help_text="On a 4xx after MAIL FROM, keep the recipients queued for their retry instead of trying the "
        "next host at once.",
    )
    fallback_relay = models.CharField(
        max_length=300,
        blank=True,
        default="",
        help_text="HOST[:PORT] tried when every host of the route failed a recipient (refused, timed out, 4xx), "
        "before the recipient waits for its retry. Empty: none.",
    )
    source_address = models.CharField(
        max_length=45,
        blank=True,
        default="",
        help_text="Local IP address this route's connections come from (one of this machine's). Empty: "
        "ESAROUTES_DELIVERY_SOURCE_ADDRESS, or the system's choice.",
    )
    ehlo_name = models.CharField(
        max_length=255,
        blank=True,
        default="",
        help_text="The EHLO name this route's connections say. Empty: ESAROUTES_DELIVERY_EHLO.",
    )

    class Meta(TypedModelMeta):
        ordering = ["domain", "sender"]
        constraints = [models.UniqueConstraint(fields=["domain", "sender"], name="unique_domain_sender")]

    def __str__(self) -> str:
        return f"{self.domain} sender={self.sender}" if self.sender else self.domain

    @property
    def is_default(self) -> bool:
        return self.domain == self.DEFAULT_DOMAIN


class DestinationHost(models.Model):
    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="hosts")
    host = models.CharField(max_length=255, db_index=True, help_text="Hostname (IDNA), IPv4 or IPv6 address")
    a_only = models.BooleanField(default=False, help_text="[host]: A/AAAA records only, no MX lookup")
    port = models.PositiveIntegerField(default=25)
    priority = models.PositiveIntegerField(default=0)
    weight = models.PositiveSmallIntegerField(
        default=1, help_text="Share of the new connections among the hosts of its priority that are up (1-100)"
    )
    position = models.PositiveSmallIntegerField(default=0, help_text="Order of entry, for display")

    class Meta(TypedModelMeta):
        ordering = ["priority", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["route", "host", "port"], name="unique_host_port_per_route"),
            models.CheckConstraint(condition=models.Q(port__gte=1, port__lte=65535), name="port_range"),
            models.CheckConstraint(condition=models.Q(priority__lte=65535), name="priority_range"),
            models.CheckConstraint(condition=models.Q(weight__gte=1, weight__lte=100), name="weight_range"),
        ]

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/pri={self.priority}"


class RouteTableVersion(models.Model):
    """One row; bumped in the transaction of every route change so workers know their cached table is stale."""

    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"route table v{self.version}"


class DefaultDestinationProtected(ValueError):
    """Refused: the Default destination control entry cannot be deleted."""


class DestinationControlQuerySet(models.QuerySet["DestinationControl"]):
    def delete(self) -> tuple[int, dict[str, int]]:
        """Refuse a bulk delete that includes the Default entry (the admin's action, a stray shell command)."""
        if self.filter(destination=destinations.DEFAULT).exists():
            raise DefaultDestinationProtected(destinations.DEFAULT_PROTECTED)
        return super().delete()


class DestinationControl(Timestamped):
    """The ESA's Destination Controls: delivery limits per destination, plus the Default entry.

    The rules are `routes.destinations`' (the model's `clean()`, the services, the form, the admin and the
    `destconfig` command all use them); every write goes through `routes.services`, which audits it and bumps
    the route table version so the workers' snapshot (`RouteTable.destinations`) follows.
    """

    DEFAULT = destinations.DEFAULT

    class LimitScope(models.TextChoices):
        DOMAIN = "domain", destinations.LIMIT_SCOPES["domain"]
        IP = "ip", destinations.LIMIT_SCOPES["ip"]

    class IPPreference(models.TextChoices):
        IPV4_PREFERRED = "ipv4-preferred", destinations.IP_PREFERENCES["ipv4-preferred"]
        IPV4_REQUIRED = "ipv4-required", destinations.IP_PREFERENCES["ipv4-required"]
        IPV6_PREFERRED = "ipv6-preferred", destinations.IP_PREFERENCES["ipv6-preferred"]
        IPV6_REQUIRED = "ipv6-required", destinations.IP_PREFERENCES["ipv6-required"]

    class TLS(models.TextChoices):
        NONE = "none", destinations.TLS_MODES["none"]
        PREFERRED = "preferred", destinations.TLS_MODES["preferred"]
        REQUIRED = "required", destinations.TLS_MODES["required"]
        PREFERRED_VERIFY = "preferred-verify", destinations.TLS_MODES["preferred-verify"]
        REQUIRED_VERIFY = "required-verify", destinations.TLS_MODES["required-verify"]

    destination = models.CharField(
        max_length=255, unique=True, help_text="example.com, .example.com, an IP address, or default"
    )
    max_connections = models.PositiveIntegerField(
        default=destinations.DEFAULT_MAX_CONNECTIONS, help_text="Concurrent connections, 1-1,000"
    )
    max_messages_per_connection = models.PositiveIntegerField(
        default=destinations.DEFAULT_MAX_MESSAGES_PER_CONNECTION, help_text="1-1,000, then a new connection"
    )
    recipient_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many recipients per the minutes below; empty: no limit"
    )
    recipient_minutes = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1-60")
    limit_scope = models.CharField(max_length=8, choices=LimitScope.choices, default=LimitScope.DOMAIN)
    ip_preference = models.CharField(
        max_length=16, choices=IPPreference.choices, default=destinations.DEFAULT_IP_PREFERENCE
    )
    tls = models.CharField(max_length=16, choices=TLS.choices, default=destinations.DEFAULT_TLS)
    bounce_profile = models.ForeignKey(
        "delivery.BounceProfile",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="destination_controls",
    )

    objects = DestinationControlQuerySet.as_manager()

    class Meta(TypedModelMeta):
        ordering = ["destination"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_connections__gte=1, max_connections__lte=destinations.MAX_CONNECTIONS),
                name="destination_max_connections_range",
            ),
            models.CheckConstraint(
                condition=models.Q(
                    max_messages_per_connection__gte=1,
                    max_messages_per_connection__lte=destinations.MAX_MESSAGES_PER_CONNECTION,
                ),
                name="destination_max_messages_range",
            ),
            models.CheckConstraint(
                condition=models.Q(recipient_limit__isnull=True, recipient_minutes__isnull=True)
                | models.Q(
                    recipient_limit__gte=1,
                    recipient_minutes__gte=1,
                    recipient_minutes__lte=destinations.MAX_RECIPIENT_MINUTES,
                ),
                name="destination_recipient_limit_pair",
            ),
        ]

    def __str__(self) -> str:
        return self.destination

    @property
    def is_default(self) -> bool:
        return self.destination == self.DEFAULT

    def clean(self) -> None:
        """Store the destination normalised; refuse out-of-range limits, a half recipient limit, a renamed
        Default and a destination listed twice, each at its field."""
        errors: dict[str, list[str]] = {}
        if self.destination:
            try:
                self.destination = destinations.normalize_destination(self.destination)
            except destinations.DestinationError as exc:
                errors["destination"] = [str(exc)]
            else:
                errors.update(destination_problems(self.destination, self.pk))
        errors.update(destinations.entry_limits_problems(self))  # never about the destination
        if errors:
            raise ValidationError(errors)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        if self.is_default:
            raise DefaultDestinationProtected(destinations.DEFAULT_PROTECTED)
        return super().delete(*args, **kwargs)


def destination_problems(stored: str, pk: int | None) -> dict[str, list[str]]:
    """The database's rules for a stored destination: the Default keeps its name; each destination once."""
    if pk is not None:
        current = DestinationControl.objects.filter(pk=pk).values_list("destination", flat=True).first()
        if current == DestinationControl.DEFAULT and stored != DestinationControl.DEFAULT:
            return {"destination": [destinations.DEFAULT_RENAMED]}
    others = DestinationControl.objects.filter(destination=stored)
    if pk is not None:
        others = others.exclude(pk=pk)
    if others.exists():
        shown = destinations.display_destination(stored)
        if stored == DestinationControl.DEFAULT:
            return {"destination": ["The Default entry already exists: edit it instead."]}
        return {"destination": [f"{shown} already has a destination control entry: edit that one."]}
    return {}


class RecipientAccessRule(Timestamped):
    """Recipient Access Table: which receiving domains the listener accepts from any client."""

    class Action(models.TextChoices):
        ACCEPT = "accept", "Accept"
        REJECT = "reject", "Reject"

    domain = models.CharField(max_length=255, unique=True, help_text="example.com, .example.com or ALL")
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.ACCEPT)
    comment = models.CharField(max_length=255, blank=True)

    class Meta(TypedModelMeta):
        ordering = ["domain"]
        verbose_name = "recipient access rule"

    def __str__(self) -> str:
        return f"{self.domain} {self.action.upper()}"

    def clean(self) -> None:
        """Store the domain normalised; refuse `ALL = ACCEPT` (an open relay) and a second rule for a domain."""
        if not self.domain:
            return  # the field's own "required" check says so
        try:
            self.domain = domains.normalize_receiving_domain(self.domain)
        except domains.DomainError as exc:
            raise ValidationError({"domain": str(exc)}) from None
        if opens_relay(self.domain, self.action):
            raise ValidationError({"action": OPEN_RELAY_MESSAGE})
        if RecipientAccessRule.objects.filter(domain=self.domain).exclude(pk=self.pk).exists():
            shown = "ALL" if self.domain == domains.DEFAULT_ROUTE else domains.display_domain(self.domain)
            raise ValidationError({"domain": f"{shown} already has a rule: change that one."})


def opens_relay(domain: str, action: str) -> bool:
    """Would this stored Recipient Access Table rule accept every domain from every client (`ALL = ACCEPT`)?"""
    return domain == domains.DEFAULT_ROUTE and action == RecipientAccessRule.Action.ACCEPT


class RelayNetwork(models.Model):
    """Client networks allowed to relay to any domain (the ESA's RELAYLIST)."""

    network = models.CharField(max_length=64, unique=True, help_text="CIDR, IPv4 or IPv6")
    comment = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TypedModelMeta):
        ordering = ["network"]

    def __str__(self) -> str:
        return self.network

    def clean(self) -> None:
        """Store the network in canonical CIDR form; refuse text that is not one, `/0` and a network listed twice."""
        if not self.network:
            return
        self.network = normalize_network(self.network)
        if RelayNetwork.objects.filter(network=self.network).exclude(pk=self.pk).exists():
            raise ValidationError({"network": f"{self.network} is already a relay network."})


def normalize_network(text: str) -> str:
    """The stored form of a relay network (`10.0.0.1/8` is `10.0.0.0/8`); ValidationError at `network` says why."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        message = f'"{text.strip()}" is not an IP address or network (CIDR, e.g. 10.0.0.0/8)'
        raise ValidationError({"network": message}) from None
    if network.prefixlen == 0:
        message = f"{network} is every address: relaying for it makes this an open relay for every client. Refused."
        raise ValidationError({"network": message})
    return str(network)


class SmtpUser(models.Model):
    """A user allowed to relay after SMTP AUTH on the listener. The password is hashed like Django's own."""

    username = models.CharField(max_length=150, unique=True)
    password = models.CharField(max_length=128)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TypedModelMeta):
        ordering = ["username"]
        verbose_name = "SMTP AUTH user"

    def __str__(self) -> str:
        return self.username

    def clean(self) -> None:
        """A user name is printable characters without spaces (surrounding ones are dropped), used once."""
        self.username = self.username.strip()
        if not self.username:
            return
        if any(not c.isprintable() or c.isspace() for c in self.username):
            raise ValidationError({"username": "A user name is printable characters without spaces."})
        if SmtpUser.objects.filter(username=self.username).exclude(pk=self.pk).exists():
            raise ValidationError({"username": f"There is already an SMTP user {self.username}."})


class AuditEntry(models.Model):
    """Who changed what, when: written by routes.audit in the same transaction as the change."""

    class Action(models.TextChoices):
        CREATE = "create", "Create"
        UPDATE = "update", "Update"
        DELETE = "delete", "Delete"
        IMPORT = "import", "Import"
        CLEAR = "clear", "Clear"
        ACTION = "action", "Action"

    at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_name = models.CharField(max_length=150, help_text="Kept when the user is deleted; 'cli' for commands")
    action = models.CharField(max_length=16, choices=Action.choices)
    object_type = models.CharField(max_length=64, db_index=True)
    object_repr = models.CharField(max_length=300, db_index=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta(TypedModelMeta):
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.object_type} {self.object_repr}"
