"""MX resolution for USEDNS routes and for recipients that no route covers (RFC 5321 §5.1, RFC 7505).

    hosts = dns.mx_hosts("example.test")   # [Host("mx1.example.test", 25, 10), Host("mx2.example.test", 25, 20)]

Only the MX step happens here. Each exchange becomes an :class:`engine.Host` named by its host name; turning
the name into addresses is the SMTP client's getaddrinfo, later, one host at a time. The one exception is the
implicit MX of RFC 5321 §5.1: a domain with no MX records is its own mail host if it has an A or AAAA record,
so only then are A and AAAA asked, and only whether they exist.

Outcomes, in the ESA's vocabulary (reference/esa.md §2.2, "DNS Hard Error" bounces with DCID 0):

* :class:`DnsHardFailure` (bounce the recipients now): NXDOMAIN (``5.1.2``), a null MX (``5.1.10``), no MX and
  no A/AAAA (``5.1.2``), a name that cannot be a domain (``5.1.2``).
* :class:`DnsTempFailure` (keep the recipients queued for their retry): SERVFAIL, REFUSED or any other unhappy
  rcode from every server, a timeout, no usable server (``4.4.3``).

Every exception message starts with an RFC 3463 enhanced status code, so the queue can log and bounce with it
as is (``str(exc).split(" ", 1)``).

Decisions:

* **Order.** Hosts come sorted by preference, then by name, so one answer always gives one list; spreading the
  load over equal preferences (RFC 5321 §5.1 "randomize") is :func:`engine.order_hosts`' per-connection
  rotation, not this module's job. An exchange listed twice keeps its lowest preference.
* **Null MX.** RFC 7505 says a domain with a null MX (``0 .``) has no other MX. When a zone breaks that rule,
  the null record is ignored and the real exchanges are used (mail that can be delivered is delivered); only
  when every MX is ``.`` is it a null MX bounce.
* **Names.** The domain may be given with or without a trailing dot, in any case, and as a U-label
  (``bücher.test``): dnspython turns it into its A-label (IDNA 2003 when the ``idna`` package is not
  installed, which it is not). Host names come back in lower case, as ASCII (``xn--...``), without the final
  dot, so the host-down state keyed on them is stable.
* **Budget.** ``ESAROUTES_DNS_TIMEOUT`` bounds one :func:`mx_hosts` call, all queries together (MX, then A and
  AAAA for an implicit MX); each try of one server waits at most 2 s of it, so a lost UDP packet is retried.
* **Caches.** One ``dns.resolver.Resolver`` per (servers, timeout) value, built once (``lru_cache``), each with
  a ``dns.resolver.Cache``: answers, NXDOMAIN and "no such record" included, are kept for their TTL (the
  negative ones for the SOA minimum), so a thousand messages to one domain ask once. Failures (SERVFAIL,
  timeouts) are not cached: the next message asks again. :func:`clear_cache` forgets everything.
* **Servers.** ``ESAROUTES_DNS_SERVERS`` lists ``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; empty means the system
  resolver (/etc/resolv.conf). A bad value raises ``ImproperlyConfigured`` naming the variable: settings.py
  checks it at start-up, and this module again when a test or a runtime override changed it.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.resolver
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from delivery import engine
from esaroutes import env

#: Longest wait for one try of one server; the rest of the budget goes to retries and other servers.
ATTEMPT_TIMEOUT = 2.0
#: EDNS0 UDP payload size (the DNS Flag Day 2020 value); bigger answers come over TCP.
EDNS_PAYLOAD = 1232


class DnsTempFailure(Exception):
    """SERVFAIL, timeout, no answer from any server: keep the recipients and retry later. ``4.4.3 ...``."""


class DnsHardFailure(Exception):
    """NXDOMAIN, null MX (RFC 7505 ``0 .``), no MX and no A/AAAA, a bad name: bounce. ``5.1.x ...``."""


def mx_hosts(domain: str, *, port: int = 25) -> list[engine.Host]:
    """The mail hosts of ``domain``, best first, as ``Host(name, port, priority=preference)``.

    Raises :class:`DnsHardFailure` or :class:`DnsTempFailure` (see the module docstring); never returns an
    empty list.
    """
    name = _domain_name(domain)
    shown = _show(name)
    resolver = _resolver(tuple(settings.ESAROUTES_DNS_SERVERS), float(settings.ESAROUTES_DNS_TIMEOUT))
    deadline = time.monotonic() + resolver.lifetime

    answer = _query(resolver, name, dns.rdatatype.MX, deadline, shown)
    if answer is None:
        return _implicit_mx(resolver, name, deadline, shown, port)

    best: dict[str, int] = {}
    null_mx = False
    for rdata in answer:
        assert isinstance(rdata, dns.rdtypes.ANY.MX.MX)
        if rdata.exchange == dns.name.root:
            null_mx = True
            continue
        host = _show(rdata.exchange.canonicalize())
        best[host] = min(rdata.preference, best.get(host, rdata.preference))
    if not best:
        if null_mx:
            raise DnsHardFailure(f"5.1.10 Recipient address has null MX: {shown} accepts no mail")
        return _implicit_mx(resolver, name, deadline, shown, port)  # an empty MX RRset: treat as no MX
    ordered = sorted(best.items(), key=lambda item: (item[1], item[0]))
    return [engine.Host(address=host, port=port, priority=preference) for host, preference in ordered]


def host_addresses(name: str) -> list[str]:
    """The IP addresses of a destination host name, IPv6 first, for the SMTP client to order by the
    destination's IP address preference (`engine.order_addresses`).

    An IP literal is itself. With ``ESAROUTES_DNS_SERVERS`` set, a name is asked of those servers (AAAA, then
    A, cached like MX answers), as the MX records were; with the system resolver, and for ``localhost`` names
    (RFC 6761, never sent to DNS), it is getaddrinfo's answer. A name that does not resolve raises OSError
    (no errno) whose text is the reason: the host's ``Connection Error``.
    """
    text = name.strip().rstrip(".")
    try:
        return [str(ipaddress.ip_address(text))]
    except ValueError:
        pass
    lower = text.lower()
    if not settings.ESAROUTES_DNS_SERVERS or lower == "localhost" or lower.endswith(".localhost"):
        try:
            infos = socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"host name lookup failed for {_printable(text)}: {exc.strerror or exc}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
    resolver = _resolver(tuple(settings.ESAROUTES_DNS_SERVERS), float(settings.ESAROUTES_DNS_TIMEOUT))
    deadline = time.monotonic() + resolver.lifetime
    try:
        qname = _domain_name(text)
        shown = _show(qname)
        found: list[str] = []
        for rdtype in (dns.rdatatype.AAAA, dns.rdatatype.A):
            answer = _query(resolver, qname, rdtype, deadline, shown)
            found += [rdata.to_text() for rdata in answer or ()]
    except (DnsHardFailure, DnsTempFailure) as exc:
        raise OSError(f"host name lookup failed: {exc}") from None
    if not found:
        raise OSError(f"host name lookup failed: {shown} has no A or AAAA record")
    return found


def clear_cache() -> None:
    """Forget every resolver and, with them, every cached answer (tests; a settings change at run time)."""
    _resolver.cache_clear()


def parse_server(text: str) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` → (address, port).

    Raises ValueError for anything else (a host name is refused: resolving the resolver is a loop).
    """
    text = text.strip()
    if text.startswith("[") or text.count(":") == 1:
        host, port = env.parse_listen(text)
    else:
        host, port = text, 53
    return str(ipaddress.ip_address(host)), port


# --- internals ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _resolver(servers: tuple[str, ...], timeout: float) -> dns.resolver.Resolver:
    """A resolver for one settings value, with its answer cache. Built once per value (see ``clear_cache``)."""
    if not timeout > 0:
        raise ImproperlyConfigured(f"ESAROUTES_DNS_TIMEOUT={timeout!r}: must be a number of seconds above 0")
    if servers:
        nameservers: list[dns.nameserver.Nameserver] = []
        for text in servers:
            try:
                address, port = parse_server(text)
            except ValueError:
                raise ImproperlyConfigured(
                    f"ESAROUTES_DNS_SERVERS: {text!r} is not an IP address, IP:PORT or [IPv6]:PORT"
                ) from None
            nameservers.append(dns.nameserver.Do53Nameserver(address, port))
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = nameservers
    else:
        try:
            resolver = dns.resolver.Resolver()  # /etc/resolv.conf
        except dns.resolver.NoResolverConfiguration as exc:
            # Not ImproperlyConfigured: a missing resolv.conf is the machine's state, and may be fixed while
            # the mail waits. Not cached either (lru_cache does not keep exceptions), so the fix is seen.
            raise DnsTempFailure(f"4.4.3 DNS temporary failure: no system resolver ({exc})") from None
    resolver.use_edns(0, 0, EDNS_PAYLOAD)
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, ATTEMPT_TIMEOUT)
    resolver.cache = dns.resolver.Cache()
    return resolver


def _domain_name(domain: str) -> dns.name.Name:
    text = domain.strip()
    try:
        name = dns.name.from_text(text) if text and text != "." else None
    except (dns.exception.DNSException, UnicodeError, ValueError):
        name = None
    if name is None:
        raise DnsHardFailure(f"5.1.2 Bad domain name {_printable(domain)!r}")
    return name


def _query(
    resolver: dns.resolver.Resolver,
    name: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    deadline: float,
    shown: str,
) -> dns.resolver.Answer | None:
    """One query within the call's budget. None for "the name exists, no record of this type" (NODATA)."""
    remaining = deadline - time.monotonic()
    kind = dns.rdatatype.to_text(rdtype)
    if remaining <= 0:
        raise DnsTempFailure(f"4.4.3 DNS temporary failure for {shown}: timeout ({kind})")
    try:
        return resolver.resolve(name, rdtype, search=False, lifetime=remaining)
    except dns.resolver.NoAnswer:
        return None
    except dns.resolver.NXDOMAIN:
        raise DnsHardFailure(f"5.1.2 Domain {shown} does not exist") from None
    except dns.exception.Timeout:
        raise DnsTempFailure(f"4.4.3 DNS temporary failure for {shown}: timeout ({kind})") from None
    except dns.resolver.NoNameservers as exc:
        raise DnsTempFailure(f"4.4.3 DNS temporary failure for {shown}: {_why(exc)}") from None
    except dns.exception.DNSException as exc:  # YXDOMAIN (name too long after DNAME), ...
        why = _printable(f"{type(exc).__name__}: {exc}")
        raise DnsTempFailure(f"4.4.3 DNS temporary failure for {shown}: {why}") from None


def _implicit_mx(
    resolver: dns.resolver.Resolver, name: dns.name.Name, deadline: float, shown: str, port: int
) -> list[engine.Host]:
    """RFC 5321 §5.1: no MX, so the domain is its own mail host, if it has an address at all."""
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        if _query(resolver, name, rdtype, deadline, shown) is not None:
            return [engine.Host(address=_show(name.canonicalize()), port=port, priority=0)]
    raise DnsHardFailure(f"5.1.2 Domain {shown} has no MX, A or AAAA record")


def _why(exc: dns.resolver.NoNameservers) -> str:
    """The rcodes (``SERVFAIL``, ``REFUSED``) or error kinds the servers gave, without repeats."""
    reasons: list[str] = []
    for error in exc.kwargs.get("errors") or []:
        reason = error[3] if isinstance(error[3], str) else type(error[3]).__name__
        if reason not in reasons:
            reasons.append(reason)
    return _printable(", ".join(reasons)) or "no server answered"


def _show(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in text)[:200]
