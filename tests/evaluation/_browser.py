"""A tiny DevTools-protocol client: open a local HTML file in headless Chromium, wait for the
report's viewer, collect every error the page logged and take a screenshot.

Chromium is the system's (Debian package ``chromium``; ``.ci/run`` installs it); nothing is
downloaded. WebGL2 runs on SwiftShader (CPU), so no GPU is needed.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader",
         "--enable-unsafe-swiftshader", "--hide-scrollbars", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0")


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@dataclass
class PageResult:
    state: str                       # #gv's data-state at the end: ready, error, loading, missing
    status: str                      # #gv-status's text
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    png: bytes = b""
    canvas: dict = field(default_factory=dict)  # the canvas's box in CSS pixels (x, y, width, height)
    location: str = ""               # #gv-location's text (the crosshair readout)
    requests: list[str] = field(default_factory=list)  # URLs asked for outside the file (http, ...)


class _Session:
    def __init__(self, ws_url: str, timeout: float):
        import websocket  # websocket-client, a test dependency

        # A busy page answers only between its tasks: wait as long as the whole page may take.
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            out.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            out.append(params["entry"]["text"])
    return out


def _outside_requests(events: list[dict]) -> list[str]:
    urls = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return [u for u in urls if not u.startswith(("file:", "data:", "blob:", "about:"))]


def _devtools_url(process: subprocess.Popen, deadline: float) -> str:
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"DevTools listening on (ws://\S+)", line)
        if match:
            return match.group(1)
    raise RuntimeError("chromium did not start its DevTools endpoint:\n" + "".join(lines[-20:]))


def _inspect(session: _Session, html_path: Path, deadline: float, before_shot: str) -> PageResult:
    session.events.clear()
    session.call("Page.navigate", url=Path(html_path).resolve().as_uri())
    state = "missing"
    while time.monotonic() < deadline:
        state = session.evaluate("(document.getElementById('gv')||{dataset:{state:'missing'}}).dataset.state")
        if state in ("ready", "error"):
            break
        time.sleep(0.5)
    if before_shot and state == "ready":
        session.evaluate(before_shot)
    time.sleep(1.5)  # frames for the canvas to settle
    status = session.evaluate("(document.getElementById('gv-status')||{}).textContent||''")
    location = session.evaluate("(document.getElementById('gv-location')||{}).textContent||''")
    canvas = session.evaluate("(function(){var c=document.getElementById('gv-canvas');if(!c)return {};"
                              "(document.getElementById('gv-controls')||c).scrollIntoView();var r=c.getBoundingClientRect();"
                              "return {x:r.x,y:r.y,width:r.width,height:r.height};})()")
    time.sleep(0.5)
    shot = session.call("Page.captureScreenshot", format="png")
    session.evaluate("1")  # drain events that arrived with the screenshot
    return PageResult(state or "missing", status or "", _errors(session.events), base64.b64decode(shot["data"]),
                      canvas or {}, location or "", _outside_requests(session.events))


def _inspect_or_timeout(session: _Session, html_path: Path, timeout: float, before_shot: str) -> PageResult:
    import websocket

    try:
        return _inspect(session, html_path, time.monotonic() + timeout, before_shot)
    except websocket.WebSocketTimeoutException:
        return PageResult("timeout", f"the page did not answer within {timeout:.0f} s", _errors(session.events))


def open_pages(html_paths, timeout: float = 120.0, size=(1400, 1100), before_shot: str = "") -> list[PageResult]:
    """Load each page in turn in one browser; wait until its viewer is ready or failed (or ``timeout``
    seconds per page), run ``before_shot`` (JavaScript) on a ready page, take a screenshot."""
    browser = find_browser()
    if browser is None:
        raise RuntimeError("no chromium on PATH")
    with tempfile.TemporaryDirectory() as profile:
        process = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                                    "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            browser_url = _devtools_url(process, time.monotonic() + timeout)
            port = re.search(r":(\d+)/", browser_url).group(1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
                page = next(t for t in json.load(reply) if t["type"] == "page")
            session = _Session(page["webSocketDebuggerUrl"], timeout)
            for domain in ("Page", "Runtime", "Log", "Network"):
                session.call(f"{domain}.enable")
            session.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                         deviceScaleFactor=1, mobile=False)
            return [_inspect_or_timeout(session, path, timeout, before_shot) for path in html_paths]
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
