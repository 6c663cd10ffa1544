"""The system Chromium, headless, driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

Why a pipe: it needs nothing beyond the standard library (no websocket client, no Selenium or Playwright
browser download), opens no network port, and lets the test ask the page itself whether each image
decoded, what the tables say and which errors the console saw — on the report exactly as written, with no
script added to it. Chromium reads JSON commands on fd 3 and writes replies and events on fd 4, each
message ended by a NUL byte; ``os.posix_spawn`` places our pipe ends on those two descriptors.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_ERROR_EVENTS = ("Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded", "Network.loadingFailed")


def find_browser() -> str | None:
    """The first Chromium-family browser on PATH."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


class DevToolsError(RuntimeError):
    """The browser answered a command with an error, closed the pipe or did not answer in time."""


def _high(fd: int) -> int:
    """``fd`` moved to a number above 4 (close-on-exec), so that placing the ends on 3 and 4 clobbers neither."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless browser process; ``with Browser(...) as b:`` closes it (and its helpers) afterwards."""

    def __init__(self, executable: str, profile: Path, log: Path) -> None:
        to_browser_r, self._to_browser = map(_high, os.pipe())
        self._from_browser, from_browser_w = map(_high, os.pipe())
        argv = [
            executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            "--mute-audio", "about:blank",
        ]
        actions = [
            (os.POSIX_SPAWN_DUP2, to_browser_r, 3),
            (os.POSIX_SPAWN_DUP2, from_browser_w, 4),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        ]
        self.log = log
        self.pid = os.posix_spawn(executable, argv, dict(os.environ), file_actions=actions, setsid=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(remaining, 0))
            if not ready:
                raise DevToolsError(f"the browser did not answer in time (its log: {self.log})")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise DevToolsError(f"the browser closed the pipe (its log: {self.log})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        """Run one command and return its result; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_browser, data):]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") != self._next_id:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise DevToolsError(f"{method}: {reply['error'].get('message')}")
            return reply.get("result", {})

    def wait_event(self, method: str, session: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self.events.remove(event)
                    return event
            self.events.append(self._receive(deadline))

    def close(self) -> None:
        """Ask the browser to quit; kill its process group (it started it: setsid) if it does not."""
        try:
            self.send("Browser.close", timeout=5)
        except (DevToolsError, OSError):
            pass
        deadline, exited = time.monotonic() + 10, False
        while not exited and time.monotonic() < deadline:
            exited = os.waitpid(self.pid, os.WNOHANG) != (0, 0)
            time.sleep(0 if exited else 0.05)
        try:  # whatever of its process group is left (helpers, or the browser itself if it hung)
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not exited:
            os.waitpid(self.pid, 0)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)


@dataclass
class RenderedPage:
    """What the page looked like to the browser once loaded."""

    title: str
    images: list[dict[str, Any]]  # per <img>: decoded, naturalWidth, naturalHeight, scheme, alt
    tables: dict[str, list[list[str]]]  # table id → body rows' cell texts
    scripts: int
    external: list[str]  # src/href values that leave the page
    screenshot: bytes
    problems: list[str] = field(default_factory=list)  # console errors/warnings, exceptions, failed loads


_PAGE_FACTS = """(async () => {
  const decoded = await Promise.all(Array.from(document.images, img => img.decode().then(() => true, () => false)));
  const tables = {};
  for (const t of document.querySelectorAll("table[id]")) {
    tables[t.id] = Array.from(t.tBodies[0].rows, r => Array.from(r.cells, c => c.textContent));
  }
  const links = Array.from(document.querySelectorAll("[src], [href]"),
                           e => e.getAttribute("src") || e.getAttribute("href"));
  return JSON.stringify({
    title: document.title,
    images: Array.from(document.images, (img, i) => ({decoded: decoded[i], complete: img.complete,
      naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight, scheme: img.src.slice(0, 22), alt: img.alt})),
    tables: tables,
    scripts: document.scripts.length,
    external: links.filter(v => !v.startsWith("#") && !v.startsWith("data:")),
  });
})()"""


def _problem(event: dict[str, Any]) -> str | None:
    params = event.get("params", {})
    method = event.get("method")
    if method == "Runtime.exceptionThrown":
        return f"exception: {params.get('exceptionDetails', {}).get('text')}"
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
        return f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}"
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
        entry = params["entry"]
        return f"log {entry['level']}: {entry.get('text')} ({entry.get('url', '')})"
    if method == "Network.loadingFailed":
        return f"failed load: {params.get('errorText')}"
    return None


def render(browser: Browser, url: str, width: int = 1280) -> RenderedPage:
    """Open ``url`` in a new tab ``width`` CSS pixels wide, wait for its load event, read the page's facts
    and take a full-page screenshot."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session=session)
    metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    browser.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
    navigation = browser.send("Page.navigate", {"url": url}, session=session)
    if navigation.get("errorText"):
        raise DevToolsError(f"{url}: {navigation['errorText']}")
    browser.wait_event("Page.loadEventFired", session)
    facts = browser.send("Runtime.evaluate", {"expression": _PAGE_FACTS, "awaitPromise": True, "returnByValue": True},
                         session=session)
    if "exceptionDetails" in facts:
        raise DevToolsError(f"reading the page failed: {facts['exceptionDetails'].get('text')}")
    page = json.loads(facts["result"]["value"])
    size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip},
                        session=session)
    problems = [p for e in browser.events if e.get("sessionId") == session and (p := _problem(e))]
    return RenderedPage(page["title"], page["images"], page["tables"], page["scripts"], page["external"],
                        base64.b64decode(shot["data"]), problems)
