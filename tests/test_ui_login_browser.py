"""The web UI on a server with an API token, in chromium: the app sends the browser to the login
page, a wrong token is refused there, the right one sets an HttpOnly SameSite=Strict cookie and the
app then works through it (its API calls carry no token of their own)."""
from __future__ import annotations

import pytest
from browser_live import launch
from server_live import LiveServer
from ui_browser import open_page, wait_for

from opensd.server.settings import Settings

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    settings = Settings(outputs_dir=tmp_path_factory.mktemp("ui-login") / "out", api_token="correct horse",
                        start_worker=False)
    with LiveServer(settings) as server:
        yield server


def test_token_login_then_the_app_works_through_the_cookie(live):
    with playwright_api.sync_playwright() as p:
        browser = launch(p)
        page, log = open_page(browser, live.url + "/#gallery")
        page.wait_for_url(live.url + "/login?next=%2F%23gallery")  # the page it came from, to return to
        page.fill("#token", "wrong")
        page.click("button[type=submit]")
        page.wait_for_selector("#login-error:text('wrong API token')")
        page.fill("#token", "correct horse")
        page.click("button[type=submit]")
        page.wait_for_url(live.url + "/#gallery")
        page.wait_for_selector("#panel-gallery .thumbs p")  # the gallery answered (empty)
        (cookie,) = page.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and "correct horse" not in cookie["value"]
        assert page.evaluate("document.cookie") == ""  # scripts cannot read it
        page.click("#tab-generate")
        page.wait_for_selector("#panel-generate form select[name=model] option", state="attached")
        page.fill("#panel-generate textarea[name=prompt]", "queued through the cookie")
        page.click("#panel-generate button[type=submit]")
        wait_for(lambda: live.state.queue.pending(), what="the job in the queue")
        assert [j.payload["request"]["prompt"] for j in live.state.queue.pending()] == ["queued through the cookie"]
        browser.close()
    # The one expected failure: the wrong token's 401 (a browser logs every failed load).
    assert [status for status, _ in log.failures] == [401]
    assert all("401" in text for text, _ in log.console_errors), log.console_errors
