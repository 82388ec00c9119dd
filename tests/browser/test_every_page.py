"""Every page in Chromium at a phone's width (390 px) and a desktop's (1440 px): the document is never wider than
the window, no console error is logged, axe-core finds no violation of impact "serious" or "critical", and a
screenshot of each page at each width goes to var/screenshots/<page>-<width>.png (kept out of git) for a person
to look at.

The data is real: a route with two loopback peers, the first answering 451 to RCPT, so the mail log shows a
failover the way delivery writes it; a second domain whose only host answers 4xx keeps recipients queued.

ESAROUTES_README_SCREENSHOTS=1 also writes the README's two screenshots (docs/img/dashboard.png and
docs/img/maillog-failover.png) from the same pages at 1440 px.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]
from django.utils import timezone

from delivery import worker
from delivery.models import HostStatus
from delivery.monitor import selectors
from esaroutes import tasks
from routes import services
from routes.models import DestinationControl
from tests.browser.operator_helpers import login
from tests.delivery.conftest import fresh_runner, hosts_text, queue_message  # noqa: F401 (fresh_runner: a fixture)
from tests.routes.helpers import make_route

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runner")]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "screenshots"
README_SHOTS = ROOT / "docs" / "img"
WIDTHS = (390, 1440)
HEIGHT = 900
BAD_IMPACTS = ("serious", "critical")
# The README's screenshots: the dashboard, and the whole mail log after the failover (DCID lines have no MID).
README_PAGES = {"dashboard": "dashboard.png", "maillog": "maillog-failover.png"}
# Chromium reports a page answered with an error status as a console error; on an error page that is the point.
STATUS_LINE = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})")

_axe = Axe()


class Tour:
    """Visits pages in one browser context and collects every problem, so one run reports them all."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.width = WIDTHS[0]
        self.problems: list[str] = []
        self.seen: list[str] = []
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(str(e)))

    def resize(self, width: int) -> None:
        self.width = width
        self.page.set_viewport_size({"width": width, "height": HEIGHT})

    def visit(self, name: str, path: str, status: int = 200) -> None:
        response = self.page.goto(self.base + path)
        self.check(name, response.status if response else None, status)

    def submit(self, name: str, click: Callable[[], None], status: int = 200) -> None:
        """A page reached by a form: `click` sends it; the page it lands on is checked."""
        with self.page.expect_navigation() as navigation:
            click()
        response = navigation.value
        self.check(name, response.status if response else None, status)

    def check(self, name: str, got: int | None, status: int) -> None:
        page, where = self.page, f"{name} at {self.width} px"
        self.seen.append(name)
        page.wait_for_load_state("load")
        if got != status:
            self.problems.append(f"{where}: status {got}, expected {status}")
        wide = page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")
        if wide > self.width:
            culprits = page.evaluate(OVERFLOWING, self.width)
            self.problems.append(f"{where}: the document is {wide} px wide; sticking out: {culprits}")
        results = _axe.run(page)
        for v in results.response["violations"]:
            if v["impact"] in BAD_IMPACTS:
                targets = [", ".join(n["target"]) for n in v["nodes"][:3]]
                self.problems.append(f"{where}: axe {v['impact']} {v['id']} ({v['help']}) at {targets}")
        errors = [e for e in self.console if not (m := STATUS_LINE.match(e)) or int(m.group(1)) != status]
        self.problems += [f"{where}: console error: {e}" for e in errors]
        self.console.clear()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}-{self.width}.png"), full_page=True)


# The deepest elements whose right edge passes the window's: what makes a page too wide.
OVERFLOWING = """(width) => {
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.right > width + 1 && ![...el.children].some(c => c.getBoundingClientRect().right > width + 1)) {
      let p = el, scrolled = false;
      while ((p = p.parentElement)) { if (getComputedStyle(p).overflowX !== 'visible') { scrolled = true; break; } }
      const name = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '');
      if (!scrolled) out.push(name + (el.className ? '.' + el.className : ''));
    }
  }
  return out.slice(0, 5);
}"""


def seed(peers: Any) -> dict[str, Any]:
    """A failover delivered for real over loopback, and recipients left in the queue."""
    busy = peers.start(rcpt="451 4.3.0 Mailbox busy, try again later")
    good = peers.start()
    route = make_route("dest.test", hosts_text((busy, 0), (good, 10)))
    failover = queue_message("user@dest.test", "other@dest.test", subject="Quarterly report")
    worker.deliver_batch([failover])
    assert good.wait_for_messages(1)
    make_route("slow.test", hosts_text((busy, 0)))
    queued = queue_message("a@slow.test", "b@slow.test", subject="Waiting in the queue")
    worker.deliver_batch([queued])
    tasks.heartbeat()  # what a running worker's beat does: the dashboard shows a live worker
    now = timezone.now()  # and a host marked down, as delivery.outbound.hosts leaves it: the hosts page's Retry now
    HostStatus.objects.create(
        host="mx.down.test",
        down_until=now + timedelta(minutes=5),
        consecutive_failures=3,
        last_error="421 4.7.0 Too many connections, try later",
        last_error_at=now,
    )
    DestinationControl.objects.create(destination=".dest.test", recipient_limit=30, recipient_minutes=1)
    default = services.default_destination()  # a transactional test before this one may have flushed it
    return {"route": route.pk, "failover": failover, "queued": queued, "default_destination": default.pk}


def test_every_page_fits_both_widths_without_errors_or_serious_axe_violations(
    page: Any, live_server: Any, alice: Any, dave: Any, peers: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = seed(peers)
    routes_file = tmp_path / "routes.txt"
    routes_file.write_text("dest.test mx1.example.com/pri=10, mx2.example.com/pri=20\nnew.example USEDNS\n")
    tour = Tour(page, live_server.url)
    readme = os.environ.get("ESAROUTES_README_SCREENSHOTS") == "1"

    for width in WIDTHS:
        tour.resize(width)
        tour.visit("login", "/login/")
    login(page, live_server, "alice")

    pages = [
        ("dashboard", "/"),
        ("routes", "/routes/"),
        ("route-add", "/routes/add/"),
        ("route-edit", f"/routes/{data['route']}/"),
        ("route-test", "/routes/test/?address=user%40dest.test"),
        ("routes-import", "/routes/import/"),
        ("destinations", "/routes/destinations/"),
        ("destination-add", "/routes/destinations/add/"),
        ("destination-edit-default", f"/routes/destinations/{data['default_destination']}/"),
        ("access", "/routes/access/"),
        ("maillog", "/log/"),
        ("maillog-failover", f"/log/?mid={data['failover']}"),
        ("tracking", "/tracking/?received=week"),
        ("message", f"/tracking/{data['failover']}/"),
        ("queue", "/queue/"),
        ("hosts", "/hosts/"),
        ("domain-status", "/hosts/domain/dest.test/"),
        ("audit", "/audit/"),
    ]
    errors = [
        ("error-404", "/no/such/page/", 404),
        ("error-400-log", "/log/?mid=abc&since=garbage", 400),
        ("error-400-tracking", "/tracking/?mid=-5", 400),
    ]
    for width in WIDTHS:
        tour.resize(width)
        for name, path in pages:
            if name == "dashboard":
                tasks.heartbeat()  # beat sends one every few seconds while a worker runs
            tour.visit(name, path)
            if readme and width == 1440 and name in README_PAGES:
                README_SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(README_SHOTS / README_PAGES[name]))
        for name, path, status in errors:
            tour.visit(name, path, status)

        tour.visit("routes-import", "/routes/import/")
        page.set_input_files("#id_file", str(routes_file))
        page.click("button:has-text('Preview')")
        page.locator("#confirm-import").wait_for()
        tour.check("routes-import-preview", 200, 200)

        tour.visit("queue", "/queue/")
        tour.submit(
            "queue-confirm-bounce", lambda: page.click("#queue-domains [data-domain='slow.test'] >> text=Bounce…")
        )
        tour.visit("queue", "/queue/")
        tour.submit("queue-confirm-deliver-all", lambda: page.click("#deliver-all"))
        tour.visit("hosts", "/hosts/")
        assert page.locator("#host-table button", has_text="Retry now").is_visible()
        tour.visit("queue", "/queue/")
        tour.submit("error-400-queue-nothing-ticked", lambda: page.click("#bounce-selected"), 400)

    monkeypatch.setattr(selectors, "queue_domains", _broken)  # the live server runs in this process
    for width in WIDTHS:
        tour.resize(width)
        tour.visit("error-500", "/queue/", 500)
    monkeypatch.undo()

    page.context.clear_cookies()
    login(page, live_server, "dave")  # help desk: no queue
    for width in WIDTHS:
        tour.resize(width)
        tour.visit("error-403", "/queue/", 403)

    assert not tour.problems, "\n".join(tour.problems)
    assert len(set(tour.seen)) == 28  # every page above, each at both widths


def _broken(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a failure of the queue page, for its 500 page")
