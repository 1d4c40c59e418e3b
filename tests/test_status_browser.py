"""The status page as an admin sees it: served by the local Functions host from a Table store on
Azurite, loaded in real headless Debian ``chromium``, checked in the rendered DOM and a screenshot."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sync_core.host.server import LocalHost, load_app
from sync_core.state import TableStateStore
from tests import status_data

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
