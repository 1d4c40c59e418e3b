"""The status page as an admin sees it: served by the local Functions host from a Table store on
Azurite, loaded in real headless Debian ``chromium``, checked in the rendered DOM and a screenshot."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sync_core.core.models import Cursor, Direction, EntityType, RecordFailure, person_failure_key
from sync_core.cycle.engine import dataverse_cursor
from sync_core.cycle.operate import FAILURE_COLUMNS
from sync_core.host.server import LocalHost, load_app
from sync_core.state import TableStateStore
from sync_core.wiring.services import close_services
from tests import status_data
from tests.cdp import Browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.azurite,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="chromium is not installed (`make browser` installs Debian's chromium)",
    ),
]


class _Dom(HTMLParser):
    """Elements of the dumped DOM as (tag, attributes, text directly inside), in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}, []))
        if tag not in {"meta", "br", "img", "input", "link", "rect", "line", "circle"}:
            self._open.append(len(self.elements) - 1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}, []))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self.elements[self._open.pop()][0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self.elements[self._open[-1]][2].append(data)

    def find(self, tag: str, **attrs: str) -> list[tuple[str, dict[str, str], list[str]]]:
        return [
            element
            for element in self.elements
            if element[0] == tag and all(value in element[1].get(name, "").split() for name, value in attrs.items())
        ]


def _chromium(user_data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data_dir}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


def _png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """Width, height and the number of distinct sampled bytes of the image data (a blank page
    gives a handful)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat = b""
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    pixels = zlib.decompress(idat)
    return width, height, len(set(pixels[::7]))


@pytest.fixture
def served_status(azurite_connection_string: str, table_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``/api/status`` served by the local host over a Table store filled with an hour of cycles."""
    env = {
        "MARKETO_BASE_URL": "http://127.0.0.1:9",
        "MARKETO_CLIENT_ID": "id",
        "MARKETO_CLIENT_SECRET": "secret",
        "DATAVERSE_URL": "http://127.0.0.1:9",
        "SYNC_TABLES_CONNECTION": azurite_connection_string,
        "SYNC_TABLE_PREFIX": table_prefix,
        "SYNC_SCHEDULE": "0 */5 * * * *",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the HTTP function reads its settings from the environment
    store = TableStateStore.from_connection_string(azurite_connection_string, prefix=table_prefix)
    status_data.fill(store, datetime.now(UTC))
    with LocalHost(load_app(), environ=env, run_timers=False) as host:
        yield f"{host.base_url}/api/status"


def test_status_page_reads_at_a_glance_in_a_real_browser(served_status: str, tmp_path: Path) -> None:
    dumped = _chromium(tmp_path / "profile", "--dump-dom", served_status)
    screenshot = tmp_path / "status.png"
    _chromium(tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,1600", served_status)

    dom = _Dom()
    dom.feed(dumped.stdout)
    headline = dom.find("section", id="health")
    assert headline
    assert "warning" in headline[0][1]["class"]
    assert next(text for _, _, text in dom.find("p", **{"class": "word"})) == ["Failures open"]
    assert len(dom.find("tr", **{"class": "cycle-row"})) == status_data.CYCLES
    reasons = ["".join(text) for _, _, text in dom.find("li") if status_data.HOSTILE_REASON in "".join(text)]
    assert reasons == [status_data.HOSTILE_REASON]  # shown as text, not run
    assert dom.find("script") == []
    assert "Marketo 1003: email field is invalid" in dumped.stdout
    for chart in ("chart-records", "chart-api-calls"):
        assert len(dom.find("svg", id=chart, **{"class": "chart"})) == 1
    assert len(dom.find("g", **{"class": "cycle"})) == 2 * status_data.CYCLES
    assert len(dom.find("rect", **{"class": "bar"})) == 2 * 2 * status_data.CYCLES  # two series per chart
    assert len(dom.find("circle", **{"class": "failed"})) == 2

    width, height, colours = _png_size_and_colours(screenshot)
    assert (width, height) == (1280, 1600)
    assert screenshot.stat().st_size > 20_000
    assert colours > 50


# -- the operators' buttons, clicked in the browser ------------------------------------------------

ORPHAN = person_failure_key(Direction.TO_DYNAMICS, 3003)  # its person is not linked: a retry resolves it
STUBBORN = person_failure_key(Direction.TO_MARKETO, 3004)


@pytest.fixture
def served_actions(
    azurite_connection_string: str, table_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, TableStateStore]]:
    """The status page (opened with a key, as in Azure) over a store with two failures and a lead cursor."""
    env = {
        "MARKETO_BASE_URL": "http://127.0.0.1:9",
        "MARKETO_CLIENT_ID": "id",
        "MARKETO_CLIENT_SECRET": "secret",
        "DATAVERSE_URL": "http://127.0.0.1:9",
        "SYNC_TABLES_CONNECTION": azurite_connection_string,
        "SYNC_TABLE_PREFIX": table_prefix,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = TableStateStore.from_connection_string(azurite_connection_string, prefix=table_prefix)
    now = datetime.now(UTC)
    failures = [
        RecordFailure(
            key=key,
            direction=Direction(key.split(":")[0]),
            entity=EntityType.LEAD,
            marketo_id=marketo_id,
            reasons=["jobtitle: longer than the 100 characters Dynamics allows"],
            fields=["title"],
            first_failed_at=now - timedelta(minutes=minutes),
            last_failed_at=now - timedelta(minutes=minutes),
            next_retry_at=now + timedelta(minutes=5),
        )
        for key, marketo_id, minutes in ((ORPHAN, 3003, 1), (STUBBORN, 3004, 2))
    ]
    store.upsert_failures(failures)
    store.put_cursor(Cursor(name=dataverse_cursor(EntityType.LEAD), value="https://org/leads?$deltatoken=9"))
    with LocalHost(load_app(), environ=env, run_timers=False) as host:
        yield f"{host.base_url}/api/status?code=admin-key", store
    close_services()


def test_operators_click_retry_resync_dismiss_reset_and_export_in_a_real_browser(
    served_actions: tuple[str, TableStateStore], tmp_path: Path
) -> None:
    url, store = served_actions
    downloads = tmp_path / "downloads"
    with Browser(CHROMIUM, tmp_path / "profile", downloads) as browser:
        browser.open(url)
        assert browser.count("tr.failure-row") == 2

        # Retry one failure now: its person is not linked any more, so it is resolved.
        browser.click(f'tr.failure-row:has(input[value="{ORPHAN}"]) button.retry')
        assert browser.evaluate("document.getElementById('result').dataset.outcome") == "done"
        assert "1 resolved" in (browser.text("#result") or "")
        browser.click("#back")
        assert browser.evaluate("location.search") == "?code=admin-key"
        assert browser.count("tr.failure-row") == 1

        # Resync the other's person: not linked, so refused, and nothing changes.
        browser.click(f'tr.failure-row:has(input[value="{STUBBORN}"]) button.resync')
        assert browser.evaluate("document.getElementById('result').dataset.outcome") == "refused"
        assert "not linked" in (browser.text("#result") or "")
        browser.click("#back")

        # Dismiss it: the page asks for a reason first.
        browser.click(f'tr.failure-row:has(input[value="{STUBBORN}"]) button.dismiss')
        assert store.get_failures([STUBBORN])  # nothing done before the reason
        browser.type("#reason", "known test record")
        browser.click("#confirm-button")
        assert browser.evaluate("document.getElementById('result').dataset.outcome") == "done"
        browser.click("#back")
        assert browser.count("tr.failure-row") == 0

        # Reset the lead cursor: a confirmation first, then the page says who reset it and when.
        browser.click("button.reset-lead")
        assert "re-reads every lead" in (browser.text("#confirm") or "")
        assert store.get_cursor(dataverse_cursor(EntityType.LEAD)) is not None
        browser.click("#confirm-button")
        assert browser.evaluate("document.getElementById('result').dataset.outcome") == "done"
        browser.click("#back")
        assert "cursor lead reset by admin key at" in (browser.text("#health") or "")
        assert store.get_cursor(dataverse_cursor(EntityType.LEAD)) is None
        actions = [browser.evaluate(f"document.querySelectorAll('tr.action-row')[{i}].innerText") for i in range(4)]
        assert [row.split("\t")[1:4] for row in actions] == [
            ["reset-cursor", "lead", "done"],
            ["dismiss", STUBBORN, "done"],
            ["resync", "marketo:3004", "refused"],
            ["retry", ORPHAN, "done"],
        ]

        # Export the collisions (none) and the failures (none left) as CSV files.
        browser.download("button.export-failures")
        [saved] = list(downloads.glob("sync-failures-*.csv"))
        assert saved.read_text(encoding="utf-8").splitlines() == [",".join(FAILURE_COLUMNS)]

        # The setup checks, on demand.
        browser.click("button.run-checks")
        assert browser.count("tr.check-row") >= 9
        assert browser.count("tr.check-row.fail") >= 1  # nothing listens where Marketo should be
        assert "check(s) failed" in (browser.text("#checks-verdict") or "")
    assert [action.via for action in store.list_actions()] == ["page"] * 5
