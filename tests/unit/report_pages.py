"""What the report's tests share: envelopes as the topics carry them, and the report page as Debian's chromium
draws it (a screenshot's colours; the elements that run past the window's right edge)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest


def env(event_type: str, data: dict, at: str = "2025-03-01T00:00:00Z", event_id: str | None = None) -> dict:
    return {"event_id": event_id or str(uuid.uuid4()), "event_type": event_type, "schema_version": 1,
            "occurred_at": at, "producer": "test", "correlation_id": data.get("request_id", "x"),
            "causation_id": None, "data": data}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("chromium is not installed: the report page is checked in a headless browser. "
                "Install it with ./scripts/install (as root) or `apt-get install chromium`.")


def screenshot(page_html: str, tmp_path: Path, width: int, height: int):
    """The page drawn by headless chromium in a window of width x height, as an RGB image (PIL)."""
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(page_html, encoding="utf-8")
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"--window-size={width},{height}",
         page.as_uri()],
        capture_output=True, timeout=90, cwd=tmp_path)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    return Image.open(shot).convert("RGB")


def pixels_by_color(image) -> dict[tuple[int, int, int], int]:
    """Pixels per colour."""
    return {rgb: n for n, rgb in image.getcolors(maxcolors=1 << 20)}


# Every element of the page that reaches past the right edge of the viewport (or starts left of it).
OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.querySelectorAll('body *')) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 && (box.right > width + 0.5 || box.left < -0.5)) {
      wide.push(`${el.tagName.toLowerCase()}${el.className && el.className.baseVal === undefined && el.className
        ? '.' + el.className : ''} ${Math.round(box.left)}..${Math.round(box.right)}`);
    }
  }
  return {width, scrollWidth: document.documentElement.scrollWidth, wide: wide.slice(0, 20)};
}"""


def overflow(page_html: str, tmp_path: Path, width: int, count: str) -> tuple[dict, int]:
    """The page in chromium driven by Playwright, in a window `width` px wide: what OVERFLOW_JS finds, and how
    many elements match the selector `count`."""
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(page_html, encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(page_file.as_uri())
            return page.evaluate(OVERFLOW_JS), page.locator(count).count()
        finally:
            browser.close()


def most_held(builder, events: list[dict], held) -> int:
    """`events` fed to `builder` one at a time: the most `held(builder)` (what it keeps in memory) ever was."""
    most = 0
    for e in events:
        builder.add(e)
        most = max(most, held(builder))
    return most
