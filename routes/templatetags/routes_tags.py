"""Showing stored (IDNA) domains and hosts to people, in Unicode."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django import template

from routes import audit, domains, importexport, matching
from routes.models import DestinationHost

if TYPE_CHECKING:
    from routes.services import ImportSummary

register = template.Library()

# The filters that only show a stored value the way routes.domains, routes.matching and routes.audit already do.
_SHOWN: dict[str, Callable[..., object]] = {
    "unicode_domain": domains.display_domain,  # `.xn--bcher-kva.example` → `.bücher.example`; `ALL` unchanged
    "unicode_sender": matching.display_sender,  # `alerts@xn--bcher-kva.example`, `.app.example`, `<>`
    "audit_action": audit.action_label,
    "audit_object": audit.object_label,
    "audit_changes": audit.changes,
}
for _name, _show in _SHOWN.items():
    register.filter(_name, _show)


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
