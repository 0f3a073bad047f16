"""The HTML report in a real browser (headless Chromium through Playwright), at a laptop's and a
phone's width: every image loads, nothing is wider than the page, no table needs scrolling (on a
phone its rows are cards of labelled values), and a plot of several panels keeps a readable width
on a phone, scrolling sideways inside its own box. Skips with a reason where Chromium is not
installed (.ci/run installs Debian's)."""

import shutil
from pathlib import Path

import pytest

WIDTHS = (1280, 390)


def assert_report_renders(page_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
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
                plots = page.evaluate("[...document.querySelectorAll('.plot')].map(p => [p.getBoundingClientRect().right, "
                                      "p.querySelector('img').getBoundingClientRect().width])")
                assert all(right <= width and shown >= min(600, width - 40) for right, shown in plots), (width, plots)
                if width < 700:  # a phone: the table's header row gives way to each cell's label
                    assert page.evaluate("[...document.querySelectorAll('td')].every(td => td.dataset.label)")
                page.close()
        finally:
            browser.close()
