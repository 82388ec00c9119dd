"""A route's own source address and EHLO name (the ESA's Virtual Gateway addresses; Postfix's `smtp_bind_address`
and `smtp_helo_name` per transport): checked when a route is saved, with no Django.

The source address must be an address of this machine: `local_address_problem` binds a socket to it (port 0,
nothing is connected or sent), which is the question the kernel answers at delivery too. Without them a route's
connections come from `ESAROUTES_DELIVERY_SOURCE_ADDRESS` (or the system's choice) and say
`ESAROUTES_DELIVERY_EHLO`.
"""

from __future__ import annotations

import ipaddress
import socket

from routes import domains

SOURCE_PREFIX = "source address: "  # a service's route-level message about the source address field
EHLO_PREFIX = "EHLO name: "


def normalize_source_address(text: str) -> str:
    """The stored form of a typed source address ("" for none): an IPv4 or IPv6 address, canonical. ValueError
    says why it is not one."""
    text = text.strip().removeprefix("[").removesuffix("]")
    if not text:
        return ""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f'"{text}" is not an IP address (type one of this machine\'s, e.g. 192.0.2.10)') from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError("an IPv6 zone index (%...) is not allowed")
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{address} cannot be the address a connection comes from")
    return address.compressed


def local_address_problem(address: str) -> str | None:
    """Why connections cannot come from `address` on this machine now (None: they can). Binds a socket to it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
    except OSError as exc:
        return f"{address} is not an address of this machine ({exc.strerror or exc})"
    return None


def normalize_ehlo_name(text: str) -> str:
    """The stored form of a typed EHLO name ("" for none): a host name in lower-case IDNA, or an address literal
    (`[192.0.2.10]`, RFC 5321 §4.1.3). ValueError says why it is neither."""
    text = text.strip()
    if not text:
        return ""
    if text.startswith("["):
        inner = text[1:-1] if text.endswith("]") else ""
        try:
            literal = ipaddress.ip_address(inner.removeprefix("IPv6:"))
        except ValueError:
            raise ValueError(f'"{text}" is not an address literal like [192.0.2.10]') from None
        return f"[IPv6:{literal.compressed}]" if literal.version == 6 else f"[{literal}]"
    try:
        return domains.to_ascii_name(text)
    except ValueError as exc:
        raise ValueError(f'"{text}" is not a host name: {exc}') from None
