"""Render a report in headless Chromium and check it displays (a screenshot is taken)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fsq.reports import render
from tests import lemmy_seed as S
from tests.test_report import make_incident, make_settings, state  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.postgres]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path, png, profile, *, height=2000) -> subprocess.CompletedProcess:
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not found; install the Debian package `chromium`")
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--hide-scrollbars", f"--user-data-dir={profile}",
         f"--screenshot={png}", f"--window-size=1200,{height}", html_path.as_uri()],
        capture_output=True, text=True, timeout=120)


def test_report_displays_in_chromium(pg_new_db, state, tmp_path):  # noqa: F811
    Image = pytest.importorskip("PIL.Image")
    url = pg_new_db()
    S.seed_lemmy(url, "1.0")
    repo = pg_new_db()
    S.seed_pictrs(repo)
    settings = make_settings(tmp_path, lemmy_database_url=url, pictrs_database_url=repo,
                             instance_url=S.INSTANCE_URL)
    iid = make_incident(state, viewed=True)
    path = render.generate_report(state, iid, settings).path
    png = tmp_path / "report.png"
    r = screenshot(path, png, tmp_path / "chromium-profile")
    assert r.returncode == 0, r.stderr[-2000:]
    assert png.is_file() and png.stat().st_size > 10_000
    with Image.open(png) as im:
        assert im.size == (1200, 2000)
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50          # text, tables, badges
        # the page is mostly light (white paper on a light grey background), not a blank or
        # an error page
        dark = sum(n for n, (r_, g, b) in colours if r_ + g + b < 200)
        assert 0.005 < dark / (1200 * 2000) < 0.5
    keep = tmp_path.parent / "fsq-report-screenshot.png"
    shutil.copy(png, keep)       # left next to the test's tmp dir for a person to look at
