"""A scriptable authoritative DNS server on loopback, for the whole test suite (dnspython only).

Load as a plugin (``"tests.support.dnsserver"`` in ``pytest_plugins`` of tests/conftest.py) and ask for the fixture:

    def test_mx_order(dns_server: DnsServer) -> None:
        dns_server.add("example.test", "MX", "20 mx2.example.test.")
        dns_server.add("example.test", "MX", "10 mx1.example.test.")
        assert [h.address for h in dns.mx_hosts("example.test")] == ["mx1.example.test", "mx2.example.test"]

The fixture starts one server per test on 127.0.0.1, UDP and TCP on the same random free port, in a thread;
points ``settings.ESAROUTES_DNS_SERVERS`` at it (through pytest-django's ``settings`` fixture, so it is undone
after the test); and clears delivery.outbound.dns's resolver and answer caches before and after the test.

What it answers (the server is authoritative for every name, like one big zone under the root):

* a name with records of the asked type: those records (AA set), TTL as given to :meth:`DnsServer.add`;
* a name that has records of other types only, or that is an empty non-terminal (``test.`` when
  ``example.test.`` has records): NOERROR with no answer (NODATA);
* any other name: NXDOMAIN. So "anything not added is NXDOMAIN"; no REFUSED unless asked with
  :meth:`DnsServer.refused`. Negative answers carry an SOA for ``.`` whose minimum is ``negative_ttl``, so a
  resolver caches them as a real server's would;
* :meth:`DnsServer.servfail`, :meth:`DnsServer.nxdomain`, :meth:`DnsServer.refused` force that rcode for every
  type of one name; :meth:`DnsServer.stall` never answers it (the resolver's timeout must fire);
* with ``otherwise="refused"`` (or another rcode), every name not forced gets that rcode instead;
* over UDP, an answer bigger than the query's EDNS payload (512 bytes without EDNS) comes back empty with TC
  set, so the client must retry over TCP.

Every query received is recorded in :attr:`DnsServer.queries` as ``(name, type, transport)``, names in lower
case without the final dot; :meth:`DnsServer.count` counts them, for cache tests.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Query:
    name: str  # lower case, no final dot
    type: str  # "MX", "A", ...
    transport: str  # "udp" or "tcp"


def _key(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, str):
        name = dns.name.from_text(name)  # relative text is made absolute; U-labels become A-labels
    return name.canonicalize()


class DnsServer:
    """See the module docstring. Thread-safe: the test thread scripts, the server thread answers."""

    def __init__(self, negative_ttl: int = 60, *, otherwise: str | None = None) -> None:
        self.negative_ttl = negative_ttl
        self.otherwise = otherwise  # an rcode ("refused", ...) for every name not forced: a server that knows nothing
        self.queries: list[Query] = []
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], tuple[int, list[str]]] = {}
        self._forced: dict[dns.name.Name, str] = {}  # name → "servfail" | "nxdomain" | "refused" | "stall"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._udp, self._tcp = self._bind()
        self.port: int = self._udp.getsockname()[1]
        self.address = f"{LOOPBACK}:{self.port}"
        self._held: list[socket.socket] = []  # TCP connections of stalled queries, closed at stop
        self._thread = threading.Thread(target=self._serve, name=f"dns-server-{self.port}", daemon=True)

    # --- scripting ------------------------------------------------------------------------------------------

    def add(self, name: str, rtype: str, rdata: str, *, ttl: int = 300) -> None:
        """Add one record, e.g. ``add("example.test", "MX", "10 mx1.example.test.")``."""
        key = (_key(name), dns.rdatatype.from_text(rtype))
        dns.rrset.from_text(key[0], ttl, "IN", key[1], rdata)  # fail here, in the test, on bad rdata
        with self._lock:
            old_ttl, rdatas = self._records.get(key, (ttl, []))
            self._records[key] = (min(old_ttl, ttl), [*rdatas, rdata])

    def servfail(self, name: str) -> None:
        self._force(name, "servfail")

    def nxdomain(self, name: str) -> None:
        """NXDOMAIN for every type, even if records were added."""
        self._force(name, "nxdomain")

    def refused(self, name: str) -> None:
        self._force(name, "refused")

    def stall(self, name: str) -> None:
        """Never answer queries for this name, over UDP or TCP."""
        self._force(name, "stall")

    def count(self, name: str | None = None, rtype: str | None = None) -> int:
        """How many queries arrived (for one name and/or type)."""
        want = None if name is None else _key(name).to_text(omit_final_dot=True)
        with self._lock:
            return sum(
                1
                for q in self.queries
                if (want is None or q.name == want) and (rtype is None or q.type == rtype.upper())
            )

    def _force(self, name: str, what: str) -> None:
        with self._lock:
            self._forced[_key(name)] = what

    # --- answering ------------------------------------------------------------------------------------------

    def answer(self, query: dns.message.Message, transport: str) -> dns.message.Message | None:
        """The response to one query, or None to stay silent."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name.canonicalize(), question.rdtype
        with self._lock:
            self.queries.append(Query(qname.to_text(omit_final_dot=True), dns.rdatatype.to_text(qtype), transport))
            forced = self._forced.get(qname, self.otherwise)
            found = self._records.get((qname, qtype))
            exists = any(owner.is_subdomain(qname) for owner, _ in self._records)
        if forced == "stall":
            return None
        if forced is not None:
            response.set_rcode(dns.rcode.from_text(forced.upper()))
            if forced == "nxdomain":
                response.authority.append(self._soa())
            return response
        if found is not None:
            ttl, rdatas = found
            response.answer.append(dns.rrset.from_text(qname, ttl, "IN", qtype, *rdatas))
        else:
            if not exists:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa())
        return response

    def _soa(self) -> dns.rrset.RRset:
        soa = f"ns.test. hostmaster.test. 1 3600 600 86400 {self.negative_ttl}"
        return dns.rrset.from_text(dns.name.root, self.negative_ttl, "IN", "SOA", soa)

    # --- the server thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in (self._udp, self._tcp, *self._held):
            sock.close()

    @staticmethod
    def _bind() -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket on one free port (retry if the UDP port's TCP twin is taken)."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((LOOPBACK, 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((LOOPBACK, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError("no free port for both UDP and TCP on 127.0.0.1")

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            selector.register(self._tcp, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    try:
                        if key.fileobj is self._udp:
                            self._serve_udp()
                        else:
                            self._serve_tcp()
                    except OSError:  # a client that went away (e.g. after its timeout) must not stop the server
                        continue

    def _serve_udp(self) -> None:
        wire, peer = self._udp.recvfrom(65535)
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return
        response = self.answer(query, "udp")
        if response is None:
            return
        limit = query.payload if query.edns >= 0 else 512
        try:
            out = response.to_wire(max_size=max(limit, 512))
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            out = truncated.to_wire()
        self._udp.sendto(out, peer)

    def _serve_tcp(self) -> None:
        conn, _ = self._tcp.accept()
        conn.settimeout(2.0)  # dnspython sends the whole query at once; this only bounds a broken client
        keep = False
        try:
            (length,) = struct.unpack("!H", _recv_exactly(conn, 2))
            query = dns.message.from_wire(_recv_exactly(conn, length))
            response = self.answer(query, "tcp")
            if response is None:
                keep = True  # a stalled query: hold the connection open and silent until stop
            else:
                out = response.to_wire(max_size=65535)  # not the query's EDNS payload: that is for UDP
                conn.sendall(struct.pack("!H", len(out)) + out)
        except (OSError, EOFError, dns.exception.DNSException):
            pass
        finally:
            if keep:
                self._held.append(conn)
            else:
                conn.close()


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("connection closed mid-message")
        data += chunk
    return data


@contextlib.contextmanager
def running_dns_server(**kwargs: Any) -> Iterator[DnsServer]:
    server = DnsServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns_server(settings: Any) -> Iterator[DnsServer]:
    """A fresh authoritative server per test, used by delivery.outbound.dns through ESAROUTES_DNS_SERVERS."""
    from delivery.outbound import dns as delivery_dns

    with running_dns_server() as server:
        settings.ESAROUTES_DNS_SERVERS = [server.address]
        delivery_dns.clear_cache()
        try:
            yield server
        finally:
            delivery_dns.clear_cache()


@pytest.fixture(scope="session")
def refusing_dns_server() -> Iterator[DnsServer]:
    """One server for the whole run that answers REFUSED to every query: tests/conftest.py points every test's
    MX lookups at it, so a lookup nobody scripted is a temporary failure at once, not after a timeout."""
    with running_dns_server(otherwise="refused") as server:
        yield server
