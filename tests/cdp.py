"""A small driver for headless Debian ``chromium`` over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: commands on fd 3, answers on fd 4, JSON messages ended by NUL), so a
test can click and type in a real browser with nothing but the standard library. Clicks and
typing are real input events at the element's place on the page, as a user's would be; the page
itself runs no script."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

TIMEOUT = 30.0


class Browser:
    def __init__(self, chromium: str, user_data_dir: Path, download_dir: Path) -> None:
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # The child's ends go to its fds 3 (it reads commands) and 4 (it writes answers), which a
        # shell's redirections do; first moved above 10, so the redirections cannot overwrite them.
        child_read, child_write = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, answers_write))
        os.close(commands_read)
        os.close(answers_write)
        self._process = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$0" "$@" 3<&{child_read} 4>&{child_write} {child_read}<&- {child_write}>&-',
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                f"--user-data-dir={user_data_dir}",
                "--window-size=1280,1600",
                "about:blank",
            ],
            pass_fds=(child_read, child_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_read)
        os.close(child_write)
        self._next_id = 0
        self._answered: dict[int, dict[str, Any]] = {}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(download_dir), eventsEnabled=True)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session=True)

    # -- the protocol ----------------------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._answers, 65536)
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._answered[message["id"]] = message
                        self._lock.notify_all()
                else:
                    self._events.put(message)

    def send(self, method: str, *, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(lambda: self._next_id in self._answered, timeout=TIMEOUT):
                raise TimeoutError(f"chromium did not answer {method}")
            answer = self._answered.pop(self._next_id)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            event = self._events.get(timeout=max(0.1, deadline - time.monotonic()))
            if event["method"] == method:
                params: dict[str, Any] = event.get("params", {})
                return params

    def _drain(self) -> None:
        while not self._events.empty():
            self._events.get_nowait()

    # -- what a test does --------------------------------------------------------------------------

    def open(self, url: str) -> None:
        self._drain()
        self.send("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """Read the page (DevTools evaluation; the page's own CSP forbids it any script)."""
        answer = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        return answer["result"].get("value")

    def text(self, selector: str) -> str | None:
        found = self.evaluate(f"(e => e && e.innerText)(document.querySelector({json.dumps(selector)}))")
        return None if found is None else str(found)

    def count(self, selector: str) -> int:
        return int(self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))

    def click(self, selector: str, *, navigates: bool = True) -> None:
        """A left click in the middle of the element (scrolled into view first); waits for the page
        it leads to unless ``navigates`` is False."""
        box = self.evaluate(
            f"(e => {{ if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();"
            f" return [r.x + r.width / 2, r.y + r.height / 2]; }})(document.querySelector({json.dumps(selector)}))"
        )
        if box is None:
            raise AssertionError(f"nothing on the page matches {selector}")
        x, y = box
        self._drain()
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1)
        if navigates:
            self.wait_for("Page.loadEventFired")

    def type(self, selector: str, text: str) -> None:
        self.click(selector, navigates=False)
        self.send("Input.insertText", session=True, text=text)

    def download(self, selector: str) -> None:
        """Click a button that answers with a file; wait until the browser has saved it."""
        self.click(selector, navigates=False)
        while self.wait_for("Browser.downloadProgress")["state"] != "completed":
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            self.send("Browser.close")
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._commands)
        os.close(self._answers)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
