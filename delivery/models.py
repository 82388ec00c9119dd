"""The queue. The database is the truth; the broker only says "look at message N now".

A message (MID = primary key) and each recipient (RID 0, 1, ...) carry their own state, next attempt time and
last reply; a worker owns a message while its lease runs (`leased_by`/`leased_until`, taken with a conditional
UPDATE by `delivery.spool.lease`). The raw bytes live in MessageBody so listing messages never drags the bodies along.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django_stubs_ext.db.models import TypedModelMeta

MAX_DELAY_WARNINGS = 100  # per message, as a bounce profile may set


class BounceProfile(models.Model):
    """Retry schedule and bounce behaviour, as on the ESA's Network > Bounce Profiles. "Default" always exists."""

    DEFAULT_NAME = "Default"

    name = models.CharField(max_length=64, unique=True)
    max_retries = models.PositiveIntegerField(default=100)
    max_queue_lifetime = models.PositiveIntegerField(default=259_200, help_text="Seconds (72 hours)")
    initial_retry = models.PositiveIntegerField(default=60, help_text="Seconds before the first retry")
    max_retry_timeout = models.PositiveIntegerField(default=3600, help_text="Ceiling of the doubling retry wait")
    send_bounces = models.BooleanField(default=True, help_text="Send a DSN to the envelope sender on hard bounce")
    send_warnings = models.BooleanField(
        default=False,
        verbose_name="Send delay warning messages",
        help_text="While a message is delayed (from its second attempt on), send an RFC 3464 delay report "
        "(Action: delayed) to the envelope sender; never to <>.",
    )
    warning_interval = models.PositiveIntegerField(
        default=14_400,
        verbose_name="Minimum interval between delay warnings",
        help_text="Seconds (4 hours)",
    )
    warning_max = models.PositiveIntegerField(
        default=1, verbose_name="Maximum number of delay warnings", help_text="Per message"
    )

    class AfterPossibleDelivery(models.TextChoices):
        RESEND = "resend", "Send it again to the next host (a possible duplicate)"
        DELIVERED = "delivered", "Count it as delivered (a possible loss)"

    after_possible_delivery = models.CharField(
        max_length=16,
        choices=AfterPossibleDelivery.choices,
        default=AfterPossibleDelivery.RESEND,
        verbose_name="After a Possible Delivery",
        help_text=(
            "The connection was lost after the message's final dot and before the host's reply, so the host may "
            "have it (the mail log's Possible Delivery line). Sending it again is what RFC 5321 prefers; counting "
            "it delivered is the ESA's Possible Delivery switch, and loses the message if the host did not keep it."
        ),
    )

    class Meta(TypedModelMeta):
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Retry waits of at least a second, the ceiling no lower than the first wait; "Default" keeps its name."""
        errors: dict[str, str] = {}
        if self.initial_retry < 1:
            errors["initial_retry"] = "Wait at least 1 second before the first retry."
        elif self.max_retry_timeout < self.initial_retry:
            errors["max_retry_timeout"] = f"The ceiling must be at least the first wait ({self.initial_retry} seconds)."
        if self.max_queue_lifetime < 1:
            errors["max_queue_lifetime"] = "Keep a message queued for at least 1 second."
        if self.warning_interval < 1:
            errors["warning_interval"] = "Leave at least 1 second between two delay warnings."
        if not 1 <= self.warning_max <= MAX_DELAY_WARNINGS:
            errors["warning_max"] = f"Send from 1 to {MAX_DELAY_WARNINGS} delay warnings per message."
        if not self._state.adding and self.name != self.DEFAULT_NAME:
            stored = BounceProfile.objects.filter(pk=self.pk).values_list("name", flat=True).first()
            if stored == self.DEFAULT_NAME:
                errors["name"] = f'The "{self.DEFAULT_NAME}" profile is used by every route without one: keep its name.'
        if errors:
            raise ValidationError(errors)


class Message(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"  # at least one recipient still to deliver
        DONE = "done", "Done"  # every recipient delivered, bounced, dropped or deleted

    icid = models.BigIntegerField(default=0, db_index=True, help_text="0 = generated here (bounces)")
    sender = models.CharField(max_length=998, blank=True, db_index=True, help_text="Envelope sender; '' is <>")
    client_address = models.GenericIPAddressField(null=True, blank=True)
    client_helo = models.CharField(max_length=255, blank=True)
    auth_user = models.CharField(max_length=150, blank=True)
    message_id = models.CharField(max_length=998, blank=True, db_index=True, help_text="Message-ID header")
    subject = models.TextField(blank=True)
    size = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(db_index=True)
    bounce_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="generated_bounces"
    )
    state = models.CharField(max_length=8, choices=State.choices, default=State.QUEUED)
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="Earliest due recipient")
    leased_by = models.CharField(max_length=200, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Delay warnings sent to the sender so far, and when the last one was (the bounce profile's interval and maximum)
    warnings_sent = models.PositiveSmallIntegerField(default=0, db_default=0)
    last_warning_at = models.DateTimeField(null=True, blank=True)

    class Meta(TypedModelMeta):
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="message_due")]

    def __str__(self) -> str:
        return f"MID {self.pk}"

    def log_lines(self, limit: int) -> list[MailLogLine]:
        """The message's mail log lines in log order, at most `limit`: the MID's own, plus its ICID's connection
        lines and its DCIDs' connection lines (which name no MID)."""
        dcids = set(self.attempts.values_list("dcid", flat=True))
        # Three index lookups merged in Python: an OR across three columns defeats SQLite's planner.
        parts = [models.Q(mid=self.pk)]
        if self.icid:
            parts.append(models.Q(icid=self.icid, mid__isnull=True))
        if dcids:
            parts.append(models.Q(dcid__in=dcids, mid__isnull=True))
        found: dict[int, MailLogLine] = {}
        for cond in parts:
            for line in MailLogLine.objects.filter(cond).order_by("id")[:limit]:
                found[line.pk] = line
        return [found[k] for k in sorted(found)][:limit]


class MessageBody(models.Model):
    message = models.OneToOneField(Message, primary_key=True, on_delete=models.CASCADE, related_name="body")
    data = models.BinaryField()

    def __str__(self) -> str:
        return f"body of MID {self.pk}"


class Recipient(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"  # not attempted yet
        DELAYED = "delayed", "Delayed"  # attempted, soft failure, waiting for its retry
        DELIVERED = "delivered", "Delivered"
        BOUNCED = "bounced", "Hard bounced"
        DROPPED = "dropped", "Dropped (/dev/null)"
        DELETED = "deleted", "Deleted"

    ACTIVE = (State.QUEUED, State.DELAYED)

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="recipients")
    rid = models.PositiveIntegerField()
    address = models.CharField(max_length=998, db_index=True)
    domain = models.CharField(max_length=255, help_text="IDNA, lower-case")
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_response = models.TextField(blank=True)
    last_host = models.CharField(max_length=300, blank=True)
    dsn_status = models.CharField(max_length=16, blank=True, help_text="Enhanced status code, e.g. 5.1.1")
    finished_at = models.DateTimeField(null=True, blank=True)
    held = models.BooleanField(
        default=False, help_text="On hold (holdrecipients): stays queued, never tried nor expired, until released"
    )
    redirect_host = models.CharField(
        max_length=255, blank=True, help_text="Redirected (redirectrecipients): sent to this host instead of the route"
    )
    redirect_port = models.PositiveIntegerField(default=25)

    class Meta(TypedModelMeta):
        ordering = ["message_id", "rid"]
        constraints = [models.UniqueConstraint(fields=["message", "rid"], name="unique_rid_per_message")]
        indexes = [
            models.Index(fields=["domain", "state"], name="recipient_domain_state"),
            models.Index(fields=["state", "next_attempt_at"], name="recipient_due"),
        ]

    def __str__(self) -> str:
        return f"MID {self.message_id} RID {self.rid} <{self.address}>"


class DeliveryAttempt(models.Model):
    """One recipient's outcome on one connection: the message tracking story."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        NEXT_HOST = "next_host", "Failed over to the next host"
        DELAYED = "delayed", "Delayed"
        BOUNCED = "bounced", "Hard bounced"
        CONNECTION_ERROR = "connection_error", "Connection error"

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="attempts_made")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempts")
    dcid = models.BigIntegerField(db_index=True)
    at = models.DateTimeField(db_index=True)
    host = models.CharField(max_length=255)
    ip = models.CharField(max_length=64, blank=True)
    port = models.PositiveIntegerField(default=25)
    code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.TextField(blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)

    class Meta(TypedModelMeta):
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"DCID {self.dcid} MID {self.message_id} {self.outcome}"


class HostStatus(models.Model):
    """Health of one destination host:port, shared by every worker on every machine."""

    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=25)
    down_until = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    delivered = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    connections_out = models.IntegerField(default=0)

    class Meta(TypedModelMeta):
        ordering = ["host", "port"]
        verbose_name_plural = "host statuses"
        constraints = [models.UniqueConstraint(fields=["host", "port"], name="unique_host_status")]

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class IdCounter(models.Model):
    """ICID and DCID counters on SQLite; PostgreSQL uses real sequences (see delivery.ids)."""

    name = models.CharField(max_length=16, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class MailLogLine(models.Model):
    """The mail log in the database: one ESA line each, indexed for the dashboard, tracking and the log page.

    `text` is the line without its timestamp and level, exactly as written to mail.current.
    """

    class Level(models.TextChoices):
        CRITICAL = "Critical", "Critical"
        WARNING = "Warning", "Warning"
        INFO = "Info", "Info"
        DEBUG = "Debug", "Debug"

    at = models.DateTimeField(db_index=True)
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    text = models.TextField()
    mid = models.BigIntegerField(null=True, blank=True)
    icid = models.BigIntegerField(null=True, blank=True)
    dcid = models.BigIntegerField(null=True, blank=True)
    domain = models.CharField(max_length=255, blank=True)
    host = models.CharField(max_length=255, blank=True)

    class Meta(TypedModelMeta):
        ordering = ["id"]
        # Every message writes about a dozen lines and every index costs the database on each: only the ones a
        # reader uses (delivery 0009 lists them and their readers). Most lines name no ICID or DCID, so these
        # hold only the lines that do (`mid = x` uses them on both databases). The log page's (domain, id),
        # (host, id) and (level, id) and the trigram index on the text are SQL (esaroutes 0002, delivery 0009).
        indexes = [
            models.Index(fields=["mid"], name="maillog_mid", condition=models.Q(mid__isnull=False)),
            models.Index(fields=["icid"], name="maillog_icid", condition=models.Q(icid__isnull=False)),
            models.Index(fields=["dcid"], name="maillog_dcid", condition=models.Q(dcid__isnull=False)),
        ]

    def __str__(self) -> str:
        return self.text


class DeliverySuspension(models.Model):
    """A destination domain whose deliveries an operator suspended (`suspenddel`); "ALL" suspends every one.

    Mail for it is still accepted and queued; nothing is sent until `resumedel` removes the row. In the database,
    so a suspension survives every restart.
    """

    ALL = "ALL"

    domain = models.CharField(max_length=255, unique=True, help_text='IDNA, lower-case, or "ALL"')
    suspended_at = models.DateTimeField()
    suspended_by = models.CharField(max_length=200, blank=True)

    class Meta(TypedModelMeta):
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain


class ConnectionSlot(models.Model):
    """One open outgoing connection counted against its destination's concurrent connection limit, on the
    embedded default (Redis holds these when REDIS_URL is set): see `delivery.slots`. A row whose lease ran out
    (its worker died) counts no more and is deleted by the next acquire."""

    key = models.CharField(max_length=300, help_text="The counting key: the domain, or domain|ip")
    holder = models.CharField(max_length=300)
    expires_at = models.DateTimeField()

    class Meta(TypedModelMeta):
        constraints = [models.UniqueConstraint(fields=["key", "holder"], name="unique_connection_slot")]
        indexes = [models.Index(fields=["key", "expires_at"], name="connection_slot_live")]

    def __str__(self) -> str:
        return f"{self.key} {self.holder}"


class RecipientCharge(models.Model):
    """Recipients sent to a destination at one moment, for its recipient limit's window (embedded default)."""

    key = models.CharField(max_length=300)
    at = models.DateTimeField()
    count = models.PositiveIntegerField()

    class Meta(TypedModelMeta):
        indexes = [models.Index(fields=["key", "at"], name="recipient_charge_window")]

    def __str__(self) -> str:
        return f"{self.key} {self.count}"


class ThrottleEpisode(models.Model):
    """A destination held back by a limit now: its log line was written (embedded default)."""

    key = models.CharField(max_length=300)
    kind = models.CharField(max_length=16)

    class Meta(TypedModelMeta):
        constraints = [models.UniqueConstraint(fields=["key", "kind"], name="unique_throttle_episode")]

    def __str__(self) -> str:
        return f"{self.key} {self.kind}"
