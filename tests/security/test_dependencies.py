"""Runtime dependency ranges exclude every published advisory we know of (no database, no network).

ADVISORIES lists, per package, each advisory that affected a version the range used to allow, with the
first version that fixes it. The declared lower bound must be at or above every fix, and the installed
version must be inside the declared range. Dependencies with no advisory found are not listed.
Looked up in November 2026; re-check with pip-audit where it can reach its databases.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

ADVISORIES: dict[str, list[tuple[str, str]]] = {
    # Django's release notes docs/releases/5.2.9.txt ... 5.2.19.txt (in the 5.2.19 sdist on PyPI) and
    # https://docs.djangoproject.com/en/dev/releases/security/ ; one entry per release, naming its first CVE.
    "django": [
        ("CVE-2025-13372", "5.2.9"),  # and CVE-2025-64460
        ("CVE-2026-1312", "5.2.11"),  # and CVE-2025-13473, CVE-2025-14550, CVE-2026-1207, -1285, -1287
        ("CVE-2026-25673", "5.2.12"),  # and CVE-2026-25674
        ("CVE-2026-33033", "5.2.13"),  # and CVE-2026-3902, -4277, -4292, -33034
        ("CVE-2026-35192", "5.2.14"),  # and CVE-2026-5766, -6907
        ("CVE-2026-7666", "5.2.15"),  # and CVE-2026-6873, -8404, -35193, -48587
        ("CVE-2026-53878", "5.2.16"),  # and CVE-2026-48588, -53877
        ("CVE-2026-15307", "5.2.17"),  # and CVE-2026-15337, -15830, -15920
        ("CVE-2026-84429", "5.2.18"),  # and CVE-2026-77050, -87890, -87975
        ("CVE-2026-111362", "5.2.19"),  # and CVE-2026-108147, -111211, -113593, -114582
    ],
    # pyca/cryptography CHANGELOG.rst and https://github.com/pyca/cryptography/security (GitHub Advisory Database)
    "cryptography": [
        ("GHSA-79v4-65xg-pq4g", "44.0.1"),  # CVE-2024-12797 in the OpenSSL bundled in the wheels
        ("CVE-2026-26007", "46.0.5"),
        ("CVE-2026-34073", "46.0.6"),
        ("CVE-2026-39892", "46.0.7"),  # GHSA-p423-j2cm-9vmq
        ("GHSA-537c-gmf6-5ccf", "48.0.1"),
        ("CVE-2026-69247", "50.0.0"),  # GHSA-g6cj-pr64-35w5, PKCS#7 Bleichenbacher oracle, >=44.0.0,<50.0.0
    ],
    # CVE records CVE-2026-134820 and CVE-2026-134821 (cvelistV5, VulnCheck): ASGI parser, 25.2.0 before 27.0.0
    "gunicorn": [
        ("CVE-2026-134820", "27.0.0"),
        ("CVE-2026-134821", "27.0.0"),
    ],
    # GitHub Advisory Database: h11 accepted malformed chunked bodies (request smuggling behind a lenient proxy)
    "h11": [("GHSA-vqfr-h8mv-ghfj", "0.16.0")],  # CVE-2025-43859
    # aiosmtplib CHANGELOG.rst, GitHub Advisory Database (PYSEC-2026-2338)
    "aiosmtplib": [
        ("GHSA-v3q9-hj7j-63hq", "5.1.1"),  # CVE-2026-53533, command injection via CR/LF in addresses
        ("GHSA-vxj7-4xrp-5vr4", "5.1.2"),  # STARTTLS response injection
    ],
    # PyPA advisory-database vulns/aiosmtpd/PYSEC-2024-221.yaml and PYSEC-2026-1111.yaml
    "aiosmtpd": [
        ("GHSA-pr2m-px7j-xg65", "1.4.5"),  # CVE-2024-27305, SMTP smuggling
        ("GHSA-wgjv-9j3q-jhg8", "1.4.6"),  # CVE-2024-34083, STARTTLS command injection
    ],
    # PyPA advisory-database vulns/eventlet/PYSEC-2026-2472.yaml, dnspython 2.6.1 release notes
    "dnspython": [("CVE-2023-29483", "2.6.1")],  # GHSA-3rq5-2g8h-59hc, TuDoor
    # PyPA advisory-database vulns/redis/PYSEC-2023-45.yaml (CVE-2023-28859 fixed in 4.5.4 as well)
    # 7.4.0's changelog: passwords no longer shown in a connection pool's repr (no advisory id was published)
    "redis": [("CVE-2023-28858", "4.5.4"), ("redis-py 7.4.0: password in repr", "7.4.0")],
    # CVE-2021-23727 (cvelistV5), celery Changelog.rst 5.2.2
    # 5.6.0's changelog (celery/celery#9997): broker credentials no longer logged (no advisory id was published)
    "celery": [("CVE-2021-23727", "5.2.2"), ("celery#9997: broker password logged", "5.6.0")],
    # encode/django-rest-framework PR #9439 (3.15.2) and release PR #10014 (3.17.2): CVE-2026-73228, parsers
    # reading past DATA_UPLOAD_MAX_MEMORY_SIZE; CVE-2026-73229, AdminRenderer showing what permissions refuse.
    # 3.18.0 and later carry both fixes (released after 3.17.2, from the same branch).
    "djangorestframework": [
        ("CVE-2024-21520", "3.15.2"),
        ("CVE-2026-73228", "3.17.2"),
        ("CVE-2026-73229", "3.17.2"),
    ],
}


def declared() -> dict[str, SpecifierSet]:
    with PYPROJECT.open("rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    requirements = [Requirement(dep) for dep in deps]
    return {req.name.lower(): req.specifier for req in requirements}


def lower_bound(spec: SpecifierSet) -> Version:
    floors = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
    assert floors, f"{spec} has no lower bound"
    return max(floors)


@pytest.mark.parametrize("package", sorted(ADVISORIES))
def test_lower_bound_excludes_every_advisory(package: str) -> None:
    spec = declared()[package]
    floor = lower_bound(spec)
    for advisory, fixed in ADVISORIES[package]:
        assert floor >= Version(fixed), f"{package}{spec} still allows {advisory} (fixed in {fixed})"


@pytest.mark.parametrize("package", sorted(declared()))
def test_installed_version_is_in_declared_range(package: str) -> None:
    spec = declared()[package]
    installed = version(package)
    assert spec.contains(installed, prereleases=True), f"{package} {installed} is outside {spec}"
