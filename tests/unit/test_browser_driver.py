"""tests/browser.py against a static page from http.server: the driver itself, no gateway, no
Pulsar. It needs Chromium, which `make test` installs; without it these tests fail (they are
not skipped), saying so."""

import socket
from collections.abc import Iterator

import pytest

from tests.browser import Browser, BrowserError, Page, static_site

FILES = {
    "/": (
        "text/html",
        "<!doctype html><title>driver test</title>"
        "<script>console.log('page', 'ready', 42)</script><p>hello</p>",
    ),
    "/data.txt": ("text/plain", "hello from the server"),
}


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with static_site(FILES) as origin:
        yield origin


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as browser:
        yield browser


@pytest.fixture(scope="module")
def page(browser: Browser, site: str) -> Page:
    return browser.page(f"{site}/")


def test_the_page_is_loaded_when_page_returns(page: Page) -> None:
    assert page.evaluate("document.readyState") == "complete"
    assert page.evaluate("document.title") == "driver test"
    assert page.console == ["log: page ready 42"]


def test_evaluate_returns_values_as_json_carries_them(page: Page) -> None:
    assert page.evaluate("1 + 1") == 2
    assert page.evaluate("({a: [1, 'two', null]})") == {"a": [1, "two", None]}
    assert page.evaluate("undefined") is None


def test_evaluate_awaits_promises(page: Page) -> None:
    assert page.evaluate('new Promise(r => setTimeout(() => r("done"), 50))') == "done"


def test_fetch_reaches_the_same_server(page: Page) -> None:
    assert page.evaluate("fetch('/data.txt').then(r => r.text())") == "hello from the server"
    assert page.evaluate("fetch('/missing').then(r => r.status)") == 404


def test_a_javascript_exception_is_an_assertion_error(page: Page) -> None:
    with pytest.raises(AssertionError, match="Error: boom"):
        page.evaluate("(() => { throw new Error('boom') })()")
    with pytest.raises(AssertionError, match="nope"):
        page.evaluate("Promise.reject('nope')")
    assert page.evaluate("'still usable'") == "still usable"


def test_a_page_that_cannot_load_is_a_browser_error(browser: Browser) -> None:
    with socket.socket() as unused:  # a port that was free a moment ago: nothing listens
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(BrowserError, match="ERR_CONNECTION_REFUSED"):
        browser.page(f"http://127.0.0.1:{port}/")
    assert browser.page("about:blank").evaluate("location.href") == "about:blank"


def test_a_missing_chromium_says_how_to_get_it() -> None:
    with pytest.raises(BrowserError, match="`make test` installs it"):
        Browser("/nonexistent/chromium")
