"""Forms of the operator pages. Filters come from the URL (GET), so every view is shareable and the back button
works; a bad parameter is a 400, never a 500."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms

from delivery import engine
from delivery.models import MailLogLine
from delivery.monitor import selectors
from esaroutes import numbers
from esaroutes.numbers import MAX_ID  # the id columns' range: a larger MID is a bad filter (400), not a 500
from routes import matching

TEXT_HOW = (("contains", "contains"), ("begins", "begins with"), ("is", "is"), ("empty", "is empty"))
RECIPIENT_HOW = TEXT_HOW[:3]


class UtcDateTimeField(forms.DateTimeField):
    """A date filter in UTC: an offset typed with it is converted (PostgreSQL refuses offsets past 15:59, and
    the filters compare with UTC columns anyway); one that leaves years 1 to 9999 once converted is refused."""

    def to_python(self, value: Any) -> datetime | None:
        result = super().to_python(value)
        if result is None:
            return None
        try:
            return result.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("Enter a date between the years 1 and 9999.", code="invalid") from None


class LogFilterForm(forms.Form):
    mid = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID, label="MID")
    icid = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID, label="ICID")
    dcid = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID, label="DCID")
    domain = forms.CharField(required=False, max_length=255)
    host = forms.CharField(required=False, max_length=255)
    level = forms.ChoiceField(required=False, choices=[("", "any"), *MailLogLine.Level.choices])
    since = UtcDateTimeField(required=False, label="From (UTC)")
    until = UtcDateTimeField(required=False, label="To (UTC)")
    q = forms.CharField(required=False, max_length=200, label="Text", strip=True)
    after = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID, widget=forms.HiddenInput)
    before = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID, widget=forms.HiddenInput)

    def filters(self, now: datetime, search_hours: int) -> tuple[selectors.LogFilters, bool]:
        """The filters, and whether a text search was bounded to the last `search_hours` hours by default."""
        d: dict[str, Any] = self.cleaned_data
        since = d.get("since")
        bounded = False
        if d.get("q") and since is None:
            since = now - timedelta(hours=search_hours)
            bounded = True
        return (
            selectors.LogFilters(
                mid=d.get("mid"),
                icid=d.get("icid"),
                dcid=d.get("dcid"),
                domain=(d.get("domain") or "").strip(),
                host=(d.get("host") or "").strip(),
                level=d.get("level") or "",
                since=since,
                until=d.get("until"),
                q=d.get("q") or "",
            ),
            bounded,
        )

    def query_without(self, *names: str) -> str:
        """The current filters as a query string, minus the given keys (for cursor links)."""
        from django.http import QueryDict

        qd = QueryDict(mutable=True)
        for key, value in self.data.items():
            if key not in names and key in self.fields and value not in ("", None):
                qd[key] = value
        return qd.urlencode()


RECEIVED = (("hour", "last hour"), ("day", "last day"), ("week", "last week"), ("all", "any time"), ("custom", "range"))


def _how(label: str, choices: tuple[tuple[str, str], ...]) -> forms.ChoiceField:
    """The "contains / begins with / is" selector in front of a text field, named for screen readers."""
    return forms.ChoiceField(
        required=False,
        choices=choices,
        label=label,
        widget=forms.Select(attrs={"aria-label": f"How the {label[0].lower()}{label[1:]} matches"}),
    )


class TrackingForm(forms.Form):
    sender_how = _how("Envelope sender", TEXT_HOW)
    sender = forms.CharField(required=False, max_length=320)
    recipient_how = _how("Envelope recipient", RECIPIENT_HOW)
    recipient = forms.CharField(required=False, max_length=320)
    subject_how = _how("Subject", TEXT_HOW)
    subject = forms.CharField(required=False, max_length=500)
    message_id = forms.CharField(required=False, max_length=998, label="Message-ID")
    mid = forms.IntegerField(required=False, min_value=0, max_value=MAX_ID, label="MID")
    domain = forms.CharField(required=False, max_length=255, label="Recipient domain")
    received = forms.ChoiceField(required=False, choices=RECEIVED, label="Received")
    since = UtcDateTimeField(required=False, label="From (UTC)")
    until = UtcDateTimeField(required=False, label="To (UTC)")
    outcome = forms.MultipleChoiceField(
        required=False, choices=selectors.TrackingOutcome.CHOICES, widget=forms.CheckboxSelectMultiple
    )

    def search_kwargs(self, now: datetime) -> dict[str, Any]:
        d = self.cleaned_data
        since, until = d.get("since"), d.get("until")
        received = d.get("received") or ("all" if d.get("mid") is not None else "week")
        if since or until:
            received = "custom"  # dates typed are the range searched, whatever "Received" was left at
        if received in ("hour", "day", "week"):
            since = now - {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}[received]
            until = None
        elif received == "all":
            since = until = None
        return {
            "sender": (d.get("sender") or "").strip(),
            "sender_how": d.get("sender_how") or "contains",
            "recipient": (d.get("recipient") or "").strip(),
            "recipient_how": d.get("recipient_how") or "contains",
            "subject": (d.get("subject") or "").strip(),
            "subject_how": d.get("subject_how") or "contains",
            "message_id": (d.get("message_id") or "").strip(),
            "mid": d.get("mid"),
            "domain": (d.get("domain") or "").strip(),
            "since": since,
            "until": until,
            "outcomes": d.get("outcome") or [],
        }


class AuditFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=300, label="Object or user")
    action = forms.CharField(required=False, max_length=16)
    object_type = forms.CharField(required=False, max_length=64)

    def search_kwargs(self) -> dict[str, str]:
        """`selectors.audit_entries`' arguments, for the page and the API alike."""
        d = self.cleaned_data
        return {"q": d.get("q") or "", "action": d.get("action") or "", "object_type": d.get("object_type") or ""}


class QueueActionForm(forms.Form):
    """What a queue action (deliver now, bounce, delete) applies to: one message, one destination domain, the
    recipients ticked on the queue page, or the whole queue; `confirm` is set by the confirmation page."""

    SCOPES = (("message", "one message"), ("domain", "one domain"), ("recipients", "chosen recipients"), ("all", "all"))

    scope = forms.ChoiceField(choices=SCOPES)
    mid = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    domain = forms.CharField(required=False, max_length=255)
    recipient = forms.TypedMultipleChoiceField(required=False, coerce=int, choices=())
    confirm = forms.BooleanField(required=False, widget=forms.HiddenInput)
    next = forms.CharField(required=False, max_length=2000, widget=forms.HiddenInput)
    relay = forms.CharField(required=False, max_length=300)  # redirect: HOST[:PORT] (resolve.parse_relay)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Any positive id is acceptable here; the queue functions skip ids that are gone or no longer active.
        field = self.fields["recipient"]
        assert isinstance(field, forms.TypedMultipleChoiceField)
        field.valid_value = lambda value: numbers.whole(str(value), minimum=1) is not None  # type: ignore[method-assign]

    def clean(self) -> dict[str, Any]:
        d = super().clean() or {}
        scope = d.get("scope")
        if scope == "message" and not d.get("mid"):
            raise forms.ValidationError("Which message? (mid)")
        if scope == "domain":
            domain = matching.recipient_domain((d.get("domain") or "").strip())
            if domain is None:
                raise forms.ValidationError("Which domain? (domain)")
            d["domain"] = domain
        if scope == "recipients" and not d.get("recipient"):
            raise forms.ValidationError("Tick the recipients first.")
        if len(d.get("recipient") or ()) > 1000:
            raise forms.ValidationError("At most 1000 recipients at a time.")
        return d

    def selection(self) -> dict[str, Any]:
        """Keyword arguments of `delivery.spool.actions.select_recipients` for the chosen scope."""
        d = self.cleaned_data
        scope = d["scope"]
        if scope == "message":
            return {"mids": [d["mid"]]}
        if scope == "domain":
            return {"domain": d["domain"]}
        if scope == "recipients":
            return {"recipient_ids": d["recipient"]}
        return {"everything": True}


class SuspensionForm(forms.Form):
    """Suspend or resume the deliveries to one destination domain, or to every domain ("ALL")."""

    domain = forms.CharField(max_length=255)
    next = forms.CharField(required=False, max_length=2000, widget=forms.HiddenInput)

    def clean_domain(self) -> str:
        text = self.cleaned_data["domain"].strip()
        if text.upper() == engine.SUSPEND_ALL:
            return engine.SUSPEND_ALL
        domain = matching.recipient_domain(text)
        if domain is None:
            raise forms.ValidationError(f'"{text}" is not a domain name.')
        return domain
