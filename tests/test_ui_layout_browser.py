"""The web UI's layout on every tab at desktop, tablet and phone sizes (chromium via Playwright): nothing
scrolls sideways, every tab button is in sight and clickable, and every control has an accessible name
as Chromium computes it for screen readers."""
from __future__ import annotations

import pytest
from ui_browser import browser, live, open_page, wait_for  # noqa: F401 (fixtures)

pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")

SIZES = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "tablet": {"viewport": {"width": 1024, "height": 768}, "has_touch": True},
    "phone": {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True},
}
# Roles a user operates; Chromium's accessibility tree gives each its computed name.
CONTROL_ROLES = {"textbox", "searchbox", "combobox", "listbox", "checkbox", "radio", "switch", "spinbutton",
                 "slider", "button", "tab", "link", "menuitem"}
# Each tab button lies inside the strip and the window, and is what a click at its centre reaches.
TABS_IN_SIGHT = """() => {
  const strip = document.getElementById('tabs').getBoundingClientRect();
  return [...document.querySelectorAll('#tabs [role=tab]')].filter((tab) => {
    const r = tab.getBoundingClientRect();
    const inside = r.width > 0 && r.left >= Math.max(strip.left, 0) - 0.5 && r.top >= strip.top - 0.5
      && r.right <= Math.min(strip.right, innerWidth) + 0.5 && r.bottom <= strip.bottom + 0.5;
    return !(inside && tab.contains(document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2)));
  }).map((tab) => tab.id);
}"""
OVERFLOW = "document.scrollingElement.scrollWidth - innerWidth"


def tab_ids(page) -> list[str]:
    return [t.get_attribute("id").removeprefix("tab-") for t in page.locator("#tabs [role=tab]").all()]


def show(page, tab: str) -> None:
    """Click the tab and wait until its panel has loaded what it asks the server for."""
    page.evaluate("window.scrollTo(0, 0)")
    page.click(f"#tab-{tab}")
    page.wait_for_selector(f"#panel-{tab}:not([hidden]) > *", state="attached")
    page.wait_for_load_state("networkidle")


def unnamed_controls(page, cdp) -> list[str]:
    """The controls in the accessibility tree (hidden panels are not in it) whose name is empty."""
    cdp.send("DOM.getDocument", {"depth": 0})
    found = []
    for node in cdp.send("Accessibility.getFullAXTree")["nodes"]:
        role = node.get("role", {}).get("value")
        if node.get("ignored") or role not in CONTROL_ROLES or (node.get("name", {}).get("value") or "").strip():
            continue
        target = cdp.send("DOM.resolveNode", {"backendNodeId": node["backendDOMNodeId"]})["object"]
        html = cdp.send("Runtime.callFunctionOn", {"objectId": target["objectId"], "returnByValue": True,
                                                    "functionDeclaration": "function () { return this.outerHTML; }"})
        found.append(f"{role}: {html['result']['value'][:100]}")
    return found


@pytest.mark.parametrize("size", SIZES)
def test_every_tab_fits_the_window_and_every_tab_button_stays_in_sight(browser, live, size):
    page, log = open_page(browser, live.url + "/#generate", **SIZES[size])
    page.wait_for_selector("#panel-generate form select[name=model] option", state="attached")
    tabs = tab_ids(page)
    assert len(tabs) >= 11
    for tab in tabs:
        show(page, tab)
        assert page.evaluate(OVERFLOW) <= 0, f"#{tab} scrolls sideways at {size}"
        assert page.evaluate(TABS_IN_SIGHT) == [], f"tab buttons out of sight on #{tab} at {size}"
    page.context.close()
    assert log.console_errors == [] and log.failures == []


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_control_on_every_tab_has_an_accessible_name(browser, live, size):
    page, log = open_page(browser, live.url + "/#generate", **SIZES[size])
    page.wait_for_selector("#panel-generate form select[name=model] option", state="attached")
    cdp = page.context.new_cdp_session(page)
    for tab in tab_ids(page):
        show(page, tab)
        assert unnamed_controls(page, cdp) == [], f"#{tab} at {size}"
    page.context.close()
    assert log.console_errors == [] and log.failures == []


def test_home_and_end_move_along_the_tabs_and_the_hash_follows(browser, live):
    page, log = open_page(browser, live.url + "/#gallery", **SIZES["desktop"])
    page.wait_for_selector("#panel-gallery > *", state="attached")
    tabs = tab_ids(page)
    page.focus("#tab-gallery")
    for key, expected in [("End", tabs[-1]), ("ArrowRight", tabs[0]), ("End", tabs[-1]), ("Home", tabs[0]),
                          ("ArrowLeft", tabs[-1])]:
        page.keyboard.press(key)
        wait_for(lambda: page.evaluate("location.hash") == f"#{expected}", 10, f"{key} -> #{expected}")
        assert page.evaluate("document.activeElement.id") == f"tab-{expected}"
        assert page.get_attribute(f"#tab-{expected}", "aria-selected") == "true"
        page.wait_for_selector(f"#panel-{expected}:not([hidden]) > *")
    page.context.close()
    assert log.console_errors == [] and log.failures == []
