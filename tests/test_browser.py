"""The example wiki in a real browser: headless Chromium driven by Selenium.

Uses Debian's ``chromium`` and ``chromium-driver`` packages (.ci/run installs
them with apt-get); the driver is named explicitly so Selenium never tries
to download one.  Screenshots are test artefacts: they go to
``test-artifacts/browser/<test name>/`` in the repository (git-ignored), or
under ``$WIKI_SCREENSHOTS`` when set, and each test prints where.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from server_process import ServerProcess
from test_example_app_deploy import Gunicorn

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

_MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
if _MISSING:
    _WHY = (f"needs Debian's chromium and chromium-driver, missing: {', '.join(_MISSING)}; "
            "install them with `apt-get install chromium chromium-driver` (.ci/run does)")
    # Under CI a missing browser is a broken setup, not a reason to skip: every
    # test here fails (see _browser_installed) and the rest of the run goes on.
    if not os.environ.get("CI"):
        pytest.skip(_WHY, allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[browser]'; '.[test]' has it too)")
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait


@pytest.fixture(autouse=True)
def _browser_installed():
    if _MISSING:
        pytest.fail(f"CI is set and the browser test cannot run: {_WHY}", pytrace=False)


@pytest.fixture
def site(tmp_path):
    """The wiki under gunicorn with a storage server: its base URL."""
    server = ServerProcess(tmp_path / "data.durus", log_path=tmp_path / "server.log").start()
    try:
        web = Gunicorn(tmp_path, f"durus://127.0.0.1:{server.address[1]}")
        try:
            yield f"http://127.0.0.1:{web.port}"
        finally:
            web.stop()
    finally:
        server.stop()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"


@pytest.fixture
def screenshots(request, capsys) -> Path:
    """The folder this test's screenshots go to (its path is printed after the test)."""
    folder = Path(os.environ.get("WIKI_SCREENSHOTS") or ARTIFACTS) / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    with capsys.disabled():
        print(f"\nscreenshots of {request.node.name}: {folder}")


def fill(browser, **fields: str) -> None:
    for name, value in fields.items():
        element = browser.find_element(By.NAME, name)
        element.clear()
        element.send_keys(value)


def navigate(browser, element) -> None:
    """Click ``element`` and wait until the browser has left the page it was on."""
    old = browser.find_element(By.TAG_NAME, "html")
    element.click()

    def left(_) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:  # stale; Chromium may also say the node left the document
            return True
        return False

    WebDriverWait(browser, 20).until(left)


def submit(browser, css: str = "main form button[type=submit]") -> None:
    navigate(browser, browser.find_element(By.CSS_SELECTOR, css))


def follow(browser, link_text: str) -> None:
    navigate(browser, browser.find_element(By.LINK_TEXT, link_text))


def test_sign_up_create_edit_and_find_a_page(site, browser, screenshots):
    wait = WebDriverWait(browser, 20)
    browser.get(site + "/")
    assert "This wiki has no pages yet." in browser.page_source
    follow(browser, "Sign up")

    # A mistake in the form is shown next to the field, and what was typed stays.
    fill(browser, name="grace", password="a long password", confirm="a different one")
    submit(browser)
    assert browser.find_element(By.ID, "confirm-error").text.startswith("The two passwords differ")
    assert browser.find_element(By.NAME, "name").get_attribute("value") == "grace"
    fill(browser, password="a long password", confirm="a long password")
    submit(browser)
    assert browser.find_element(By.CSS_SELECTOR, ".who").text == "grace"

    follow(browser, "New page")
    fill(
        browser,
        title="Object Databases",
        text="# Why\n\nKeep **Python objects** as they are, with [[Durus]].\n\n- no schema\n- no ORM",
        tags="databases python",
    )
    submit(browser)
    assert browser.find_element(By.CSS_SELECTOR, ".page h1").text == "Object Databases"
    assert browser.find_element(By.CSS_SELECTOR, ".text strong").text == "Python objects"

    follow(browser, "Edit")
    text = browser.find_element(By.NAME, "text")
    text.send_keys(Keys.CONTROL, Keys.END)
    text.send_keys("\n\nTransactions commit or abort as a whole, like a **zeppelin** landing.")
    fill(browser, comment="explain transactions")
    submit(browser)
    assert "Saved revision 2" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    browser.save_screenshot(str(screenshots / "page.png"))

    search = browser.find_element(By.CSS_SELECTOR, "header form.search input[name=q]")
    search.send_keys("zeppelin transactions", Keys.ENTER)
    wait.until(expected_conditions.title_contains("Search"))
    results = browser.find_elements(By.CSS_SELECTOR, "ol.results li a.title")
    assert [result.text for result in results] == ["Object Databases"]
    assert browser.find_element(By.CSS_SELECTOR, ".excerpt mark").text.lower() in {"zeppelin", "transactions"}
    browser.save_screenshot(str(screenshots / "search.png"))

    navigate(browser, results[0])
    assert "Object Databases" in browser.title
    follow(browser, "History")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.history tbody tr")
    assert [row.find_element(By.TAG_NAME, "td").text for row in rows] == ["2", "1"]
    assert "explain transactions" in rows[0].text
    browser.save_screenshot(str(screenshots / "history.png"))

    follow(browser, "Recent")
    changes = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "ul.listing .meta")]
    assert changes[0].startswith("revision 2 by grace") and "explain transactions" in changes[0]
    assert changes[1].startswith("revision 1 by grace")
    browser.save_screenshot(str(screenshots / "recent.png"))
    assert (screenshots / "page.png").stat().st_size > 10_000


def sign_up(site: str, browser, name: str) -> None:
    browser.get(site + "/signup")
    fill(browser, name=name, password="a long password", confirm="a long password")
    submit(browser)
    assert browser.find_element(By.CSS_SELECTOR, ".who").text == name


def create(site: str, browser, title: str, text: str) -> None:
    browser.get(site + "/new")
    fill(browser, title=title, text=text)
    submit(browser, "button[value=save]")
    assert browser.find_element(By.CSS_SELECTOR, ".page h1").text == title


def css(browser, selector: str):
    return browser.find_element(By.CSS_SELECTOR, selector)


MARKDOWN = """## Shopping
- milk
- eggs

one line
same paragraph\\
after a hard break

1. first
2. second

```
x = 1 < 2
```

> a quote

[the docs](https://example.com/docs), [[Existing Page]] and [[Nowhere Yet|a missing page]]
"""


def test_markdown_preview_and_links_to_missing_pages(site, browser, screenshots):
    sign_up(site, browser, "ada")
    create(site, browser, "Existing Page", "I exist.")
    browser.get(site + "/new")
    fill(browser, title="Markdown", text=MARKDOWN)
    submit(browser, "button[value=preview]")  # shown, not saved
    assert css(browser, ".preview .text h3").text == "Shopping"
    assert "Markdown" == browser.find_element(By.NAME, "title").get_attribute("value")
    browser.save_screenshot(str(screenshots / "preview.png"))
    submit(browser, "button[value=save]")

    text = css(browser, "article .text")
    assert [li.text for li in text.find_elements(By.CSS_SELECTOR, "h3 + ul > li")] == ["milk", "eggs"]
    paragraph = text.find_elements(By.TAG_NAME, "p")[0]
    assert paragraph.text == "one line same paragraph\nafter a hard break"  # a soft break is a space
    assert len(paragraph.find_elements(By.TAG_NAME, "br")) == 1
    assert [li.text for li in text.find_elements(By.CSS_SELECTOR, "ol > li")] == ["first", "second"]
    assert css(browser, "article .text pre code").text == "x = 1 < 2"
    assert css(browser, "article .text blockquote").text == "a quote"
    assert css(browser, "article .text a[href='https://example.com/docs']").text == "the docs"
    existing = css(browser, "article .text a.wikilink:not(.missing)")
    missing = css(browser, "article .text a.wikilink.missing")
    assert existing.text == "Existing Page" and missing.text == "a missing page"
    assert existing.value_of_css_property("color") != missing.value_of_css_property("color")
    browser.save_screenshot(str(screenshots / "markdown.png"))

    navigate(browser, missing)  # a missing page's link opens the form that creates it
    assert browser.find_element(By.NAME, "title").get_attribute("value") == "Nowhere Yet"
    fill(browser, text="Now I exist.")
    submit(browser, "button[value=save]")
    browser.get(site + "/wiki/markdown")
    assert not browser.find_elements(By.CSS_SELECTOR, "a.wikilink.missing")
    assert (screenshots / "markdown.png").stat().st_size > 10_000


def test_compare_revert_rename_and_a_japanese_title(site, browser, screenshots):
    sign_up(site, browser, "grace")
    create(site, browser, "Plans", "alpha\nbeta\ngamma")
    for text in ("alpha\nBETA changed\ngamma", "alpha\nBETA changed\ngamma\ndelta"):
        follow(browser, "Edit")
        fill(browser, text=text)
        submit(browser, "button[value=save]")

    follow(browser, "History")
    css(browser, "input[name=from][value='1']").click()
    css(browser, "input[name=to][value='3']").click()
    submit(browser, "#compare")
    assert "revision 1 → 3" in css(browser, "h1").text
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "table.diff del")] == ["beta"]
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "table.diff ins")] == ["BETA changed"]
    rows = browser.find_elements(By.CSS_SELECTOR, "table.diff tbody tr")
    assert [row.get_attribute("class") for row in rows] == ["same", "del", "add", "same", "add"]
    assert "@@" not in browser.page_source
    browser.save_screenshot(str(screenshots / "compare.png"))

    browser.get(site + "/wiki/plans/rev/1")
    submit(browser, "#revert")
    assert "Reverted" in css(browser, ".flash").text
    assert css(browser, "article .text").text == "alpha beta gamma"
    browser.save_screenshot(str(screenshots / "reverted.png"))

    follow(browser, "Rename")
    fill(browser, title="Better Plans")
    submit(browser)
    assert browser.current_url == site + "/wiki/better-plans"
    browser.get(site + "/wiki/plans")  # the old address leads to the new one
    assert browser.current_url == site + "/wiki/better-plans"
    assert css(browser, ".page h1").text == "Better Plans"
    browser.save_screenshot(str(screenshots / "renamed.png"))

    create(site, browser, "日本語のページ", "こんにちは、[[Better Plans]]。")
    assert unquote(browser.current_url) == site + "/wiki/日本語のページ"
    assert browser.current_url == site + "/wiki/" + quote("日本語のページ")
    assert css(browser, "article .text a.wikilink").get_attribute("class") == "wikilink"
    browser.save_screenshot(str(screenshots / "japanese.png"))
    search = css(browser, "header form.search input[name=q]")
    search.send_keys("日本", Keys.ENTER)
    WebDriverWait(browser, 20).until(expected_conditions.title_contains("Search"))
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, "ol.results a.title")] == ["日本語のページ"]
