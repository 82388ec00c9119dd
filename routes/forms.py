"""The route editor: a route form plus a formset of destination host rows
(Priority | Destination | Port | Weight | Remove).

Validation is `routes.domains`' (the same code as the admin, the importer and the `smtproutes` command); this
module only parses the cells and puts each message at the field it is about: a bad port at that row's Port, a
duplicate host at its second row's Destination, "USEDNS on ALL" above the host table. Bound forms re-render
what was typed, never a cleaned value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django import forms
from django.forms.formsets import BaseFormSet, formset_factory

from delivery.models import BounceProfile
from routes import destinations, domains, matching, services, sources
from routes.models import AuthProfile, DestinationControl, Route

FALLBACK_PREFIX = "fallback relay: "  # a service's route-level message about the fallback relay field
ROUTE_FIELD_PREFIXES = (
    ("fallback_relay", FALLBACK_PREFIX),
    ("source_address", sources.SOURCE_PREFIX),
    ("ehlo_name", sources.EHLO_PREFIX),
)
SPECIAL_HELP = "Type USEDNS (deliver by MX records) or /dev/null (accept and drop) alone in the first row."


def route_problem_field(message: str) -> tuple[str, str]:
    """(field, message without its prefix) for a service's route-level message about one field; ("", message)
    for one about the route as a whole."""
    for field, prefix in ROUTE_FIELD_PREFIXES:
        if message.startswith(prefix):
            return field, message.removeprefix(prefix)
    return "", message


class ParsedField(forms.CharField):
    """Text read by its `routes` parser (a domain, a sender pattern, a Priority cell, ...): the cleaned value is
    what `parse` returns, and its ValueError, as a sentence, is the field's error. The route editor's fields and
    the admin's are these, so a typo gets the same message in both."""

    def __init__(self, *, parse: Callable[[str], object], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parse = parse

    def clean(self, value: Any) -> Any:
        text = super().clean(value)
        try:
            return self.parse(text)
        except ValueError as exc:
            raise forms.ValidationError(_sentence(str(exc))) from None


def _name_field(
    *,
    label: str,
    max_length: int,
    help_text: str,
    required: bool = False,
    parse: Callable[[str], str] | None = None,
) -> forms.CharField:
    """A domain, address or host name typed as text: no autocompletion, no spelling marks; optional unless
    `required`; read by `parse` if given (else the form's `clean` judges it)."""
    widget = forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "size": 40})
    options: dict[str, Any] = {"label": label, "required": required, "max_length": max_length, "help_text": help_text}
    if parse is None:
        return forms.CharField(widget=widget, **options)
    return ParsedField(parse=parse, widget=widget, **options)


class RouteForm(forms.Form):
    domain = _name_field(
        parse=domains.normalize_receiving_domain,
        required=True,
        label="Receiving domain",
        max_length=300,
        help_text="example.com (that domain only), .example.com (its subdomains) or ALL (all other domains). "
        "Unicode names are fine.",
    )
    sender = _name_field(
        parse=matching.normalize_sender_pattern,
        label="Sender",
        max_length=320,
        help_text="Optional: this route applies only to mail from this envelope sender. An address "
        "(alerts@app.example), a domain (app.example), its subdomains (.app.example) or <> (the null sender, "
        "bounces). Empty: every sender.",
    )
    auth_profile = forms.ModelChoiceField(
        AuthProfile.objects.all(),
        required=False,
        empty_label="None",
        label="Outgoing SMTP authentication",
    )
    bounce_profile = forms.ModelChoiceField(
        BounceProfile.objects.all(), required=False, empty_label="Default", label="Bounce profile"
    )
    tls = forms.ChoiceField(choices=Route.TLS.choices, initial=Route.TLS.OPPORTUNISTIC, label="TLS")
    defer_on_4xx = forms.BooleanField(
        required=False,
        label="Keep recipients queued on a 4xx after MAIL FROM",
        help_text="Instead of trying the next host at once.",
    )
    fallback_relay = _name_field(
        parse=domains.fallback_relay_text,
        max_length=300,
        label="Fallback relay",
        help_text="HOST[:PORT], tried when every host of the route failed a recipient (refused, timed out, 4xx) "
        "before it waits for its retry. A 5xx still bounces. Empty: none.",
    )

    source_address = _name_field(
        parse=sources.normalize_source_address,
        max_length=64,
        label="Source address",
        help_text="The local IP address this route's connections come from: one of this machine's. Empty: the "
        "global setting (ESAROUTES_DELIVERY_SOURCE_ADDRESS, or the system's choice).",
    )
    ehlo_name = _name_field(
        parse=sources.normalize_ehlo_name,
        max_length=255,
        label="EHLO name",
        help_text="The name this route's connections give in EHLO. Empty: the global ESAROUTES_DELIVERY_EHLO.",
    )

    def clean_source_address(self) -> str:
        address: str = self.cleaned_data["source_address"]  # normalized by its field
        problem = sources.local_address_problem(address) if address else None
        if problem:
            raise forms.ValidationError(_sentence(problem))
        return address


def _number_cell(*, parse: Callable[[str], int], initial: str, size: int, label: str) -> ParsedField:
    """A number cell of the host table, read by its `domains` parser so that a bad one says which number is wrong."""
    return ParsedField(
        parse=parse,
        required=False,
        initial=initial,
        max_length=20,
        widget=forms.TextInput(attrs={"size": size, "inputmode": "numeric", "aria-label": label}),
    )


class HostRowForm(forms.Form):
    priority = _number_cell(parse=domains.parse_priority, initial="0", size=6, label="Priority")
    destination = forms.CharField(
        required=False,
        max_length=300,
        widget=forms.TextInput(
            attrs={"size": 36, "autocomplete": "off", "spellcheck": "false", "aria-label": "Destination"}
        ),
    )
    port = _number_cell(parse=domains.parse_port, initial="25", size=6, label="Port")
    weight = _number_cell(parse=domains.parse_weight, initial="1", size=4, label="Weight")

    def clean_destination(self) -> str:
        value: str = self.cleaned_data["destination"]
        return value.strip()

    @property
    def is_blank(self) -> bool:
        """A row left empty (an unused "Add row"): ignored rather than an error."""
        return not (self.data.get(self.add_prefix("destination")) or "").strip()

    @property
    def is_removed(self) -> bool:
        return bool(self.data.get(self.add_prefix("DELETE")))


class BaseHostFormSet(BaseFormSet[HostRowForm]):
    pass


HostFormSet = formset_factory(HostRowForm, formset=BaseHostFormSet, extra=0, can_delete=True)


def parse_row(destination: str, port: int, priority: int, weight: int = domains.DEFAULT_WEIGHT) -> domains.HostSpec:
    """One table row as a HostSpec; the Destination cell is a host name, `[name]`, IPv4 or IPv6 address.

    Raises ValueError when the cell is not a host, or carries a port, priority or weight of its own (they have
    columns).
    """
    if "/" in destination:
        column = "Weight" if "weight" in destination.lower() else "Priority"
        raise ValueError(f"write the {column.lower()} in the {column} column, not after the host")
    try:
        spec = domains.parse_host(destination)
    except domains.HostListError as exc:
        raise ValueError("; ".join(exc.errors)) from None
    if spec.port != domains.DEFAULT_PORT:
        raise ValueError(f"write the port ({spec.port}) in the Port column, not after the host")
    return domains.HostSpec(host=spec.host, port=port, priority=priority, a_only=spec.a_only, weight=weight)


def rows_destination(
    rows: list[tuple[str, int, int, int]],
) -> tuple[domains.Destination | None, dict[int, str]]:
    """The destination of (destination, port, priority, weight) rows: a Special typed alone, or HostSpecs.

    Returns (destination or None, {row index: problem}).
    """
    if len(rows) == 1 and rows[0][0].upper() == "USEDNS":
        return domains.Special.USEDNS, {}
    if len(rows) == 1 and rows[0][0] == "/dev/null":
        return domains.Special.DEVNULL, {}
    specs: list[domains.HostSpec] = []
    problems: dict[int, str] = {}
    for index, (text, port, priority, weight) in enumerate(rows):
        if text.upper() == "USEDNS" or text == "/dev/null":
            problems[index] = f"{text} must be the only destination of a route: remove the other rows"
            continue
        try:
            specs.append(parse_row(text, port, priority, weight))
        except ValueError as exc:
            problems[index] = str(exc)
    return (None if problems else specs), problems


def check_host_rows(live: Sequence[forms.BaseForm], domain: str | None) -> tuple[domains.Destination | None, list[str]]:
    """Check a route's host rows (already cleaned cell by cell) all at once, for the route editor and the admin.

    Every row's Destination is checked whatever its Priority and Port cells say, and the route rules (a host
    listed twice, the 100-host limit) run over the rows that parse, so one answer flags every problem. Messages
    about a row go to its Destination field; `domain` is the stored receiving domain, or None when it is wrong
    (then the rules that depend on it, USEDNS on ALL, wait for it). Returns (the destination when every row is
    good, the route-level messages).
    """
    cells_ok = [not f.errors for f in live]
    rows = [
        (
            f.cleaned_data.get("destination", ""),
            f.cleaned_data.get("port", domains.DEFAULT_PORT),
            f.cleaned_data.get("priority", 0),
            f.cleaned_data.get("weight", domains.DEFAULT_WEIGHT),
        )
        for f in live
    ]
    destination, problems = rows_destination(rows)
    for index, message in problems.items():
        live[index].add_error("destination", message)
    if destination is None or not all(cells_ok):
        good = [i for i, ok in enumerate(cells_ok) if ok and i not in problems]
        subset, _ = rows_destination([rows[i] for i in good])
        if isinstance(subset, list) and subset:
            for i, messages in domains.route_problems(domains.DEFAULT_ROUTE, subset).hosts.items():
                for message in messages:
                    live[good[i]].add_error("destination", _sentence(message))
        return None, []
    found = domains.route_problems(domain or domains.DEFAULT_ROUTE, destination)
    for index, messages in found.hosts.items():
        for message in messages:
            live[index].add_error("destination", _sentence(message))
    route = found.route if domain else [m for m in found.route if not m.startswith("USEDNS")]
    return destination, route


class RouteEditor:
    """The add/edit page's form and host rows, validated together through `routes.domains`."""

    prefix = "hosts"

    def __init__(self, data: Any = None, *, route: Route | None = None) -> None:
        self.route = route
        initial: dict[str, Any] = {}
        rows: list[dict[str, Any]] = [{"priority": "0", "destination": "", "port": "25", "weight": "1"}]
        if route is not None:
            initial = {
                "domain": domains.display_domain(route.domain),
                "sender": matching.display_sender(route.sender),
                "auth_profile": route.auth_profile_id,
                "bounce_profile": route.bounce_profile_id,
                "tls": route.tls,
                "defer_on_4xx": route.defer_on_4xx,
                "fallback_relay": route.fallback_relay,
                "source_address": route.source_address,
                "ehlo_name": route.ehlo_name,
            }
            destination = services.route_destination(route)
            if isinstance(destination, domains.Special):
                rows = [{"priority": "0", "destination": destination.value, "port": "25", "weight": "1"}]
            else:
                rows = [
                    {
                        "priority": str(h.priority),
                        "destination": _host_text(h),
                        "port": str(h.port),
                        "weight": str(h.weight),
                    }
                    for h in destination
                ] or rows
        self.form = RouteForm(data, initial=initial)
        self.hosts = HostFormSet(data, prefix=self.prefix, initial=rows)
        self.route_errors: list[str] = []
        self.data: services.RouteData | None = None

    @property
    def has_auth_profiles(self) -> bool:
        return AuthProfile.objects.exists()

    def is_valid(self) -> bool:
        """Validate everything in one pass, so the first answer flags every problem at its field."""
        form_ok = self.form.is_valid()
        self.hosts.is_valid()  # each row's cells; the formset's own management errors land in non_form_errors
        if self.hosts.non_form_errors():
            return False
        live = [f for f in self.hosts.forms if not f.is_removed and not f.is_blank]
        domain: str | None = self.form.cleaned_data.get("domain")  # checked even when another field is wrong
        destination, route_messages = check_host_rows(live, domain)
        self.route_errors += [_sentence(m) for m in route_messages]
        if not form_ok or domain is None or destination is None or self.route_errors or any(f.errors for f in live):
            return False
        auth = self.form.cleaned_data["auth_profile"]
        bounce = self.form.cleaned_data["bounce_profile"]
        self.data = services.RouteData(
            domain=domain,
            destination=destination,
            auth_profile_id=auth.pk if auth else None,
            bounce_profile_id=bounce.pk if bounce else None,
            tls=self.form.cleaned_data["tls"],
            defer_on_4xx=self.form.cleaned_data["defer_on_4xx"],
            fallback_relay=self.form.cleaned_data["fallback_relay"],
            sender=self.form.cleaned_data["sender"],
            source_address=self.form.cleaned_data["source_address"],
            ehlo_name=self.form.cleaned_data["ehlo_name"],
        )
        return True

    def apply_problems(self, problems: domains.RouteProblems, live: list[HostRowForm] | None = None) -> None:
        """Put `domains.route_problems` messages (or a service's `RouteInvalid.problems`) at their fields."""
        if live is None:
            live = [f for f in self.hosts.forms if not f.is_removed and not f.is_blank]
        for message in problems.domain:
            self.form.add_error("domain", _sentence(message))
        for message in problems.route:
            field, text = route_problem_field(message)
            if field:
                self.form.add_error(field, _sentence(text))
            else:
                self.route_errors.append(_sentence(message))
        for index, messages in problems.hosts.items():
            for message in messages:
                if index < len(live):
                    live[index].add_error("destination", _sentence(message))
                else:
                    self.route_errors.append(_sentence(message))


def _host_text(spec: domains.HostSpec) -> str:
    name = domains.display_domain(spec.host) if spec.ip is None else spec.host
    return f"[{name}]" if spec.a_only else name


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] if message else message


# ---------------------------------------------------------------------------------------------------------------
# Destination controls


def _number_input(size: int = 8) -> forms.TextInput:
    return forms.TextInput(attrs={"size": size, "inputmode": "numeric", "autocomplete": "off"})


class DestinationForm(forms.Form):
    """A destination control entry; the rules are `routes.destinations`' through `services.check_destination`,
    so the page says what the admin, the model and `destconfig` say, each message at its field."""

    destination = _name_field(
        required=True,
        label="Destination",
        max_length=300,
        help_text="example.com (that domain), .example.com (its subdomains) or an IP address. Unicode names are fine.",
    )
    max_connections = forms.IntegerField(
        label="Concurrent connections", help_text="1 to 1,000.", widget=_number_input()
    )
    max_messages_per_connection = forms.IntegerField(
        label="Maximum messages per connection", help_text="1 to 1,000; then a new connection.", widget=_number_input()
    )
    recipient_limit = forms.IntegerField(
        label="Recipient limit", required=False, help_text="Empty: no limit.", widget=_number_input()
    )
    recipient_minutes = forms.IntegerField(
        label="recipients per (minutes)", required=False, help_text="1 to 60.", widget=_number_input(4)
    )
    limit_scope = forms.ChoiceField(
        label="Apply the limits", choices=list(destinations.LIMIT_SCOPES.items()), widget=forms.RadioSelect
    )
    ip_preference = forms.ChoiceField(label="IP address preference", choices=list(destinations.IP_PREFERENCES.items()))
    tls = forms.ChoiceField(label="TLS", choices=list(destinations.TLS_MODES.items()))
    bounce_profile = forms.ModelChoiceField(
        BounceProfile.objects.all(),
        required=False,
        empty_label="None (the route's, else Default)",
        label="Bounce profile",
    )

    def __init__(self, data: Any = None, *, control: DestinationControl | None = None) -> None:
        self.control = control
        initial: dict[str, Any] = {
            "max_connections": destinations.DEFAULT_MAX_CONNECTIONS,
            "max_messages_per_connection": destinations.DEFAULT_MAX_MESSAGES_PER_CONNECTION,
            "limit_scope": destinations.SCOPE_DOMAIN,
            "ip_preference": destinations.DEFAULT_IP_PREFERENCE,
            "tls": destinations.DEFAULT_TLS,
        }
        if control is not None:
            initial = {
                "destination": destinations.display_destination(control.destination),
                "max_connections": control.max_connections,
                "max_messages_per_connection": control.max_messages_per_connection,
                "recipient_limit": control.recipient_limit,
                "recipient_minutes": control.recipient_minutes,
                "limit_scope": control.limit_scope,
                "ip_preference": control.ip_preference,
                "tls": control.tls,
                "bounce_profile": control.bounce_profile_id,
            }
        super().__init__(data, initial=initial)
        if control is not None and control.is_default:
            self.fields["destination"].disabled = True  # the Default keeps its name
        self.data_out: services.DestinationData | None = None

    def clean(self) -> dict[str, Any]:
        """Every rule at once, so the first answer flags every problem; a field that did not even parse keeps
        its own message."""
        cleaned = super().clean() or {}
        profile = cleaned.get("bounce_profile")
        if self.control is not None and self.control.is_default:
            destination = DestinationControl.DEFAULT
        else:
            destination = cleaned.get("destination", "")
        data = services.DestinationData(
            destination=destination,
            max_connections=cleaned.get("max_connections"),
            max_messages_per_connection=cleaned.get("max_messages_per_connection"),
            recipient_limit=cleaned.get("recipient_limit"),
            recipient_minutes=cleaned.get("recipient_minutes"),
            limit_scope=cleaned.get("limit_scope", destinations.SCOPE_DOMAIN),
            ip_preference=cleaned.get("ip_preference", destinations.DEFAULT_IP_PREFERENCE),
            tls=cleaned.get("tls", destinations.DEFAULT_TLS),
            bounce_profile_id=profile.pk if profile else None,
        )
        try:
            services.check_destination(data, destination_id=self.control.pk if self.control else None)
        except services.DestinationInvalid as exc:
            self.apply_problems({k: v for k, v in exc.problems.items() if k not in self.errors})
        else:
            if not self.errors:
                self.data_out = data
        return cleaned

    def apply_problems(self, problems: Mapping[str, list[str]]) -> None:
        """Put a service's `DestinationInvalid.problems` at their fields."""
        for name, messages in problems.items():
            for message in messages:
                self.add_error(name if name in self.fields else None, _sentence(message))
