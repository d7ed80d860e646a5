"""Screenshot a page in headless Chromium over the DevTools protocol (used by test_viewer.py)."""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

from conftest import free_port
from websockets.sync.client import connect


class HeadlessChromium:
    """Debian's chromium, headless, driven through its DevTools websocket."""

    def __init__(self, width: int = 1200, height: int = 800) -> None:
        self.port = free_port()
        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [
                "chromium",
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-unsafe-swiftshader",
                "--use-angle=swiftshader",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                f"--window-size={width},{height}",
                f"--user-data-dir={self.profile.name}",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2))
                self.ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        self.ws = connect(self.ws_url, max_size=None)
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                return msg.get("result", {})

    def capture(self, path: Path) -> Optional[Path]:
        """Screenshot of the page as it is now; None while the page cannot be captured yet (loading)."""
        data = self.call("Page.captureScreenshot", format="png").get("data")
        if data is None:
            return None
        path.write_bytes(base64.b64decode(data))
        return path

    def wheel(self, x: int, y: int, delta_y: int) -> None:
        """Scroll the mouse wheel over (x, y): viser's camera controls dolly the camera."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for _ in range(5):
            self.call("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0, deltaY=delta_y // 5)
            time.sleep(0.1)

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait()
        self.profile.cleanup()
