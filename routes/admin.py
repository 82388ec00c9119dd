"""The Django admin for routes, auth profiles and the audit log.

Validation is the route editor's (`routes.forms` cells, `routes.domains.route_problems`), and every write goes
through `routes.services`, so a change made here is validated, audited and seen by the delivery side exactly like
one made on the Routes page or with `smtproutes`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from django import forms as djforms
from django.contrib import admin, messages
from django.db.models import Field, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils.html import format_html

from esaroutes.admin import PasswordField, PasswordForm
from routes import audit, auth_profiles, destinations, domains, forms, matching, services, sources
from routes.access import admin as access_admin  # noqa: F401  (registers the access tables' admin)
from routes.models import AuditEntry, AuthProfile, DestinationControl, DestinationHost, Route


def _actor(request: HttpRequest) -> audit.Actor:
    user: audit.Actor = request.user
    return user


# ---------------------------------------------------------------------------------------------------------------
# Routes


class DestinationHostAdminForm(djforms.ModelForm[DestinationHost]):
    priority = forms.ParsedField(parse=domains.parse_priority, required=False, initial="0", max_length=20)
    destination = djforms.CharField(
        required=False, max_length=300, help_text="Host name, [host name] (A/AAAA only), IPv4 or IPv6"
    )
    port = forms.ParsedField(parse=domains.parse_port, required=False, initial="25", max_length=20)
    weight = forms.ParsedField(
        parse=domains.parse_weight,
        required=False,
        initial="1",
        max_length=20,
        help_text="1-100: its share of its priority's connections",
    )

    class Meta:
        model = DestinationHost
        fields = ("priority", "port", "weight")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            spec = domains.HostSpec(self.instance.host, a_only=self.instance.a_only)
            self.initial["destination"] = f"[{spec.host}]" if spec.a_only else spec.host

    def clean_destination(self) -> str:
        value: str = self.cleaned_data["destination"]
        return value.strip()


class DestinationHostFormSet(BaseInlineFormSet[DestinationHost, Route, DestinationHostAdminForm]):
    """Checks the rows with the route editor's code; the result is `self.destination` for `save_related`."""

    destination: domains.Destination | None = None

    def clean(self) -> None:
        super().clean()
        live = [
            f
            for f in self.forms
            if not f.cleaned_data.get("DELETE")
            and (f.cleaned_data.get("destination") or (f.data.get(f.add_prefix("destination")) or "").strip())
        ]
        special = domains.Special.from_code(self.instance.special)
        if special is not None:
            if live:
                raise djforms.ValidationError(
                    f"{special.value} must be the only destination of a route: remove the host rows, "
                    "or choose “Destination hosts”."
                )
            destination: domains.Destination | None = special
            found = domains.route_problems(self.instance.domain or domains.DEFAULT_ROUTE, special)
            route = found.route if self.instance.domain else []
        else:
            # The route editor's check, every row at once (routes.forms.check_host_rows).
            destination, route = forms.check_host_rows(live, self.instance.domain or None)
        if route:
            raise djforms.ValidationError([m[:1].upper() + m[1:] for m in route])
        if destination is not None and not any(f.errors for f in live):
            self.destination = destination


class DestinationHostInline(admin.TabularInline[DestinationHost, Route]):
    model = DestinationHost
    form = DestinationHostAdminForm
    formset = DestinationHostFormSet  # type: ignore[assignment]
    fields = ("priority", "destination", "port", "weight")
    extra = 1
    max_num = domains.MAX_HOSTS_PER_ROUTE


class RouteAdminForm(djforms.ModelForm[Route]):
    """The route editor's rules at their fields: the text columns are `forms.ParsedField`s (`RouteAdmin.parsers`)."""

    class Meta:
        model = Route
        fields = (
            "domain",
            "sender",
            "special",
            "auth_profile",
            "bounce_profile",
            "tls",
            "defer_on_4xx",
            "fallback_relay",
            "source_address",
            "ehlo_name",
        )
        labels = {"special": "Deliver to", "ehlo_name": "EHLO name"}

    def clean_source_address(self) -> str:
        problems = services.source_problems(self.cleaned_data["source_address"], "")
        if problems:
            text = problems[0].removeprefix(sources.SOURCE_PREFIX)
            raise djforms.ValidationError(text[:1].upper() + text[1:])
        return sources.normalize_source_address(self.cleaned_data["source_address"])

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        domain, sender = cleaned.get("domain"), cleaned.get("sender")
        if domain is not None and sender is not None:
            taken = services.domain_in_use(domain, route_id=self.instance.pk, sender=sender)
            if taken:
                self.add_error("domain", taken)
        return cleaned

    def _get_validation_exclusions(self) -> set[str]:
        # (domain, sender) is checked in clean() with the ESA's message at the field (the services check it
        # again when they write): the model's own constraint check would add a second, generic message.
        return {*super()._get_validation_exclusions(), "sender"}  # type: ignore[misc]


class KindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("exact", "Exact domain"), ("partial", "Partial (.domain)"), ("default", "Default (ALL)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "partial":
            return queryset.filter(domain__startswith=".")
        if self.value() == "default":
            return queryset.filter(domain=domains.DEFAULT_ROUTE)
        if self.value() == "exact":
            return queryset.exclude(domain__startswith=".").exclude(domain=domains.DEFAULT_ROUTE)
        return queryset


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin[Route]):
    form = RouteAdminForm
    parsers = {  # the columns typed as text that the route editor's parsers read (`forms.ParsedField`)
        "domain": domains.normalize_receiving_domain,
        "sender": matching.normalize_sender_pattern,
        "fallback_relay": domains.fallback_relay_text,
        "ehlo_name": sources.normalize_ehlo_name,
    }

    def formfield_for_dbfield(self, db_field: Field[Any, Any], request: HttpRequest, **kwargs: Any) -> Any:
        parse = self.parsers.get(db_field.name)
        if parse is not None:
            kwargs.update(form_class=forms.ParsedField, parse=parse)
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    inlines = [DestinationHostInline]
    list_display = ("shown_domain", "shown_sender", "destinations", "auth_profile", "tls", "updated_at")
    list_filter = (KindFilter, "special", "tls", "auth_profile", "bounce_profile", "defer_on_4xx")
    search_fields = ("domain", "sender", "hosts__host")
    list_select_related = ("auth_profile",)
    list_per_page = 100
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Route]:
        return super().get_queryset(request).prefetch_related("hosts")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Route], search_term: str
    ) -> tuple[QuerySet[Route], bool]:
        term = search_term.strip()
        if term and not term.isascii():
            with contextlib.suppress(ValueError):
                term = domains.to_ascii_name(term.strip("."))
        return super().get_search_results(request, queryset, term.lower())

    @admin.display(description="Receiving domain", ordering="domain")
    def shown_domain(self, route: Route) -> str:
        return "All other domains (ALL)" if route.is_default else domains.display_domain(route.domain)

    @admin.display(description="Sender", ordering="sender")
    def shown_sender(self, route: Route) -> str:
        return matching.display_sender(route.sender) or "any"

    @admin.display(description="Destination hosts")
    def destinations(self, route: Route) -> str:
        from routes import importexport

        return importexport.canonical(services.route_destination(route))

    # Writes go through the services (validated again, audited, version bumped).
    def save_model(self, request: HttpRequest, obj: Route, form: Any, change: bool) -> None:
        pass  # saved with its hosts in save_related, where the inline rows are known

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        hosts = next(f for f in formsets if isinstance(f, DestinationHostFormSet))
        assert hosts.destination is not None  # set by a valid formset
        data = services.RouteData(
            domain=form.cleaned_data["domain"],
            destination=hosts.destination,
            auth_profile_id=form.cleaned_data["auth_profile"].pk if form.cleaned_data["auth_profile"] else None,
            bounce_profile_id=form.cleaned_data["bounce_profile"].pk if form.cleaned_data["bounce_profile"] else None,
            tls=form.cleaned_data["tls"],
            defer_on_4xx=form.cleaned_data["defer_on_4xx"],
            fallback_relay=form.cleaned_data["fallback_relay"],
            sender=form.cleaned_data["sender"],
            source_address=form.cleaned_data["source_address"],
            ehlo_name=form.cleaned_data["ehlo_name"],
        )
        if change:
            route = services.route_update(route_id=form.instance.pk, data=data, actor=_actor(request))
        else:
            route = services.route_create(data=data, actor=_actor(request))
        form.instance.pk = route.pk

    def construct_change_message(self, request: HttpRequest, form: Any, formsets: Any, add: bool = False) -> Any:
        return [{"added": {}}] if add else [{"changed": {"fields": sorted(form.changed_data)}}]

    def delete_model(self, request: HttpRequest, obj: Route) -> None:
        services.routes_delete(route_ids=[obj.pk], actor=_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Route]) -> None:
        services.routes_delete(route_ids=list(queryset.values_list("pk", flat=True)), actor=_actor(request))

    @admin.action(description="Clear ALL routes (the whole table, not only the selected ones)", permissions=["delete"])
    def clear_all_routes(self, request: HttpRequest, queryset: QuerySet[Route]) -> None:
        count = services.routes_clear(actor=_actor(request))
        self.message_user(request, f"Cleared the route table ({count} routes deleted).", messages.SUCCESS)

    actions = ["clear_all_routes"]


# ---------------------------------------------------------------------------------------------------------------
# Destination controls: the model's clean() checks (the same rules as the page and destconfig), the services write


@admin.register(DestinationControl)
class DestinationControlAdmin(admin.ModelAdmin[DestinationControl]):
    list_display = ("shown_destination", *destinations.LIMIT_FIELDS, "bounce_profile")
    list_filter = ("limit_scope", "ip_preference", "tls", "bounce_profile")
    search_fields = ("destination",)
    list_select_related = ("bounce_profile",)
    fields = tuple(name.removesuffix("_id") for name in destinations.COLUMNS)  # bounce_profile: the select

    @admin.display(description="Destination", ordering="destination")
    def shown_destination(self, control: DestinationControl) -> str:
        return destinations.display_destination(control.destination)

    def get_readonly_fields(self, request: HttpRequest, obj: DestinationControl | None = None) -> Any:
        return ("destination",) if obj is not None and obj.is_default else ()

    def has_delete_permission(self, request: HttpRequest, obj: DestinationControl | None = None) -> bool:
        if obj is not None and obj.is_default:
            return False  # the Default entry always exists
        return super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: DestinationControl, form: Any, change: bool) -> None:
        data = services.DestinationData.of(obj)
        if change:
            saved = services.update_destination(destination_id=obj.pk, data=data, actor=_actor(request))
        else:
            saved = services.create_destination(data=data, actor=_actor(request))
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: DestinationControl) -> None:
        services.delete_destination(destination_id=obj.pk, actor=_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[DestinationControl]) -> None:
        ids = list(queryset.exclude(destination=DestinationControl.DEFAULT).values_list("pk", flat=True))
        if queryset.filter(destination=DestinationControl.DEFAULT).exists():
            self.message_user(request, destinations.DEFAULT_PROTECTED, messages.WARNING)
        for pk in ids:
            services.delete_destination(destination_id=pk, actor=_actor(request))


# ---------------------------------------------------------------------------------------------------------------
# Outgoing SMTP AUTH profiles


class AuthProfileAdminForm(PasswordForm[AuthProfile]):
    password = PasswordField(
        auth_profiles.password_errors,
        help_text="Stored encrypted and never shown. Leave empty to keep the current password.",
    )

    class Meta:
        model = AuthProfile
        fields = ("name", "username")


@admin.register(AuthProfile)
class AuthProfileAdmin(admin.ModelAdmin[AuthProfile]):
    form = AuthProfileAdminForm
    list_display = ("name", "username", "has_password", "updated_at")
    search_fields = ("name", "username")

    @admin.display(description="Password", boolean=True)
    def has_password(self, profile: AuthProfile) -> bool:
        return bool(profile.password_encrypted)

    def save_model(self, request: HttpRequest, obj: AuthProfile, form: Any, change: bool) -> None:
        saved = auth_profiles.save(
            profile_id=obj.pk if change else None,
            name=form.cleaned_data["name"],
            username=form.cleaned_data["username"],
            password=form.cleaned_data.get("password") or None,
            actor=_actor(request),
        )
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: AuthProfile) -> None:
        auth_profiles.delete(profile_id=obj.pk, actor=_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[AuthProfile]) -> None:
        for pk in queryset.values_list("pk", flat=True):
            auth_profiles.delete(profile_id=pk, actor=_actor(request))


# ---------------------------------------------------------------------------------------------------------------
# Audit log (read-only)


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin[AuditEntry]):
    list_display = ("at", "actor_name", "action", "object_type", "object_repr")
    list_filter = ("action", "object_type", "actor_name")
    search_fields = ("object_repr", "actor_name")
    date_hierarchy = "at"
    fields = ("at", "actor_name", "action", "object_type", "object_repr", "before_json", "after_json")
    readonly_fields = fields
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEntry | None = None) -> bool:
        return False

    @admin.display(description="Before")
    def before_json(self, entry: AuditEntry) -> str:
        return format_html("<pre>{}</pre>", json.dumps(entry.before, indent=2, ensure_ascii=False)[:200_000])

    @admin.display(description="After")
    def after_json(self, entry: AuditEntry) -> str:
        return format_html("<pre>{}</pre>", json.dumps(entry.after, indent=2, ensure_ascii=False)[:200_000])
