"""Typed readers for the environment.

Each reader raises ImproperlyConfigured naming the variable and the bad value, so a bad setting stops
start-up with a message an operator can act on instead of a traceback deep inside the program.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

N = TypeVar("N", int, float)

_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw and raw not in _BOOLS:
        raise ImproperlyConfigured(f"{name}={raw!r}: use true or false")
    return _BOOLS[raw] if raw else default


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    return _env_number(name, default, int, "expected a whole number", minimum, maximum)


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    return _env_number(name, default, float, "expected a number of seconds", minimum, None)


def _env_number(name: str, default: N, kind: type[N], expected: str, minimum: N | None, maximum: N | None) -> N:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r}: {expected}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be at most {maximum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_listen(name: str, default: str) -> tuple[str, int]:
    """Parse HOST:PORT or [IPv6]:PORT into (host, port)."""
    raw = os.environ.get(name, "").strip() or default
    try:
        return parse_listen(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r}: {exc}") from None


def parse_listen(raw: str) -> tuple[str, int]:
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("expected [ADDRESS]:PORT")
        port_text = rest[1:]
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT, for example 127.0.0.1:2525")
        if ":" in host:
            raise ValueError("write an IPv6 address in brackets, for example [::1]:2525")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def env_relay(name: str) -> tuple[str, int] | None:
    """HOST, HOST:PORT or [IPv6]:PORT (port 25 when none is given) into (host, port); None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        if raw.startswith("[") or raw.count(":") == 1:
            host, port = parse_listen(raw)
        else:
            host, port = raw, 25
            if ":" in host:
                ipaddress.IPv6Address(host)  # a bare IPv6 address: port 25
        if "," in host or any(c.isspace() for c in host) or "/" in host:
            raise ValueError("expected one HOST[:PORT], for example relay.example.net:2525")
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r}: {exc}") from None
    return host.lower().rstrip("."), port


def env_networks(name: str, default: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for item in env_list(name, default):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an IP network (use CIDR, e.g. 10.0.0.0/8)") from None
    return out


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser().resolve() if raw else default.resolve()


def env_url(name: str, schemes: tuple[str, ...]) -> str | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    scheme = raw.partition("://")[0]
    if "://" not in raw or scheme not in schemes:
        raise ImproperlyConfigured(f"{name}: the URL must start with {' or '.join(s + '://' for s in schemes)}")
    return raw
