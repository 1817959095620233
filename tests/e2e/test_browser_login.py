"""The IdP's login page in a real headless Chromium, finishing a real `zli login`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.conftest import missing_system_part

from .conftest import PASSWORD, Cluster
from .test_login import SECRET, start_login

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        missing_system_part("Debian's chromium is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_login_page_in_chromium(cluster: Cluster, chromium: Browser, tmp_path: Path) -> None:
    home = tmp_path / "zli-config"
    zli, url = start_login(cluster, home)
    page = chromium.new_page()
    try:
        page.goto(url)
        page.get_by_label("Username").fill("heidi")
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Sign in").click()
        assert "Wrong username or password." in page.content()

        page.get_by_label("Username").fill("heidi")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("http://127.0.0.1:*/callback*")  # the IdP sent the browser back to zli
        assert "Logged in" in page.content()
    finally:
        page.close()

    secret = zli.wait_for(SECRET).group(1)
    zli.write(pyotp.TOTP(secret).now() + "\n")
    assert zli.wait() == 0, zli.output
    assert "Logged in as heidi@example.com" in zli.output
