"""Showing stored (IDNA) domains and hosts to people, in Unicode."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import template

from routes import audit, domains, importexport, matching
from routes.models import AuditEntry, DestinationHost

if TYPE_CHECKING:
    from routes.services import ImportSummary

register = template.Library()


@register.filter
def unicode_domain(stored: str) -> str:
    """`.xn--bcher-kva.example` → `.bücher.example`; `ALL` and IP addresses unchanged."""
    return domains.display_domain(stored)


@register.filter
def unicode_sender(stored: str) -> str:
    """A stored sender pattern (`alerts@xn--bcher-kva.example`, `.app.example`, `<>`) as people read it."""
    return matching.display_sender(stored)


@register.filter
def unicode_address(address: str) -> str:
    """`user@xn--bcher-kva.example` → `user@bücher.example`: the domain of an address as people type it."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domains.display_domain(domain.lower())}" if at and "xn--" in domain.lower() else address


@register.filter
def host_label(host: DestinationHost | domains.HostSpec) -> str:
    """`mx.bücher.example:2525`, `[mx.example.com]`, `[2001:db8::1]:587`: host and port as the admin types them."""
    ip = domains.HostSpec(host=host.host).ip
    if ip is None:
        text = domains.display_domain(host.host)
        text = f"[{text}]" if host.a_only else text
    else:
        text = f"[{host.host}]" if ip.version == 6 and host.port != domains.DEFAULT_PORT else host.host
    return text if host.port == domains.DEFAULT_PORT else f"{text}:{host.port}"


@register.filter
def host_changes(preview: ImportSummary, domain: str) -> list[importexport.HostChange]:
    """The import preview's host-by-host changes of one route."""
    return list(preview.hosts.get(domain, []))


@register.filter
def audit_action(entry: AuditEntry) -> str:
    return audit.action_label(entry)


@register.filter
def audit_object(entry: AuditEntry) -> str:
    return audit.object_label(entry)


@register.filter
def audit_changes(entry: AuditEntry) -> list[audit.FieldChange]:
    return audit.changes(entry)
