"""The HTML report in a real browser (headless Chromium through Playwright), at a laptop's and a
phone's width: every image loads, nothing is wider than the page, no table needs scrolling (on a
phone its rows are cards of labelled values), and a plot of several panels keeps a readable width
on a phone, scrolling sideways inside its own box. Skips with a reason where Chromium is not
installed (.ci/run installs Debian's)."""

import os
import shutil
from pathlib import Path

import pytest

WIDTHS = (1280, 390)


def assert_report_renders(page_path: Path, plots: int = 1) -> None:
    """...and at least `plots` multi-panel plots are there."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("ORCHESTRATOR_REQUIRE_BROWSER") == "1":  # .ci/run installs it: a skip would hide a failure
            pytest.fail("no chromium on this machine, and ORCHESTRATOR_REQUIRE_BROWSER=1")
        pytest.skip("no chromium on this machine: `apt-get install chromium` (the browser check of report.html)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto(page_path.resolve().as_uri())
                images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
                assert images and all(images), (width, images)
                assert page.evaluate("document.documentElement.scrollWidth") <= width, width  # no sideways page
                boxes = page.evaluate("[...document.querySelectorAll('table')].map(t => [t.scrollWidth, "
                                      "t.closest('.wrap').clientWidth, t.closest('.wrap').getBoundingClientRect().right])")
                assert boxes and all(table <= box + 1 and right <= width for table, box, right in boxes), (width, boxes)
                shown = page.evaluate("[...document.querySelectorAll('.plot')].map(p => [p.getBoundingClientRect().right, "
                                      "p.querySelector('img').getBoundingClientRect().width])")
                assert len(shown) >= plots, (width, shown)
                assert all(right <= width and img >= min(600, width - 40) for right, img in shown), (width, shown)
                # a phone: no header row; each cell shows its column's name (::before) left of its value
                cells = page.evaluate("""[...document.querySelectorAll('td')].map(td => {
                    const label = getComputedStyle(td, '::before'), head = td.closest('table').tHead;
                    return [label.content, head ? getComputedStyle(head).display : 'none']})""")
                for content, head in cells:
                    labelled = content not in ("none", "normal", '""')
                    assert labelled == (width < 700) and (head == "none") == (width < 700), (width, content, head)
                page.close()
        finally:
            browser.close()
