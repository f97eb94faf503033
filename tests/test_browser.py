"""The example wiki in a real browser: headless Chromium driven by Selenium.

Uses Debian's ``chromium`` and ``chromium-driver`` packages (.ci/run installs
them with apt-get); the driver is named explicitly so Selenium never tries
to download one.  Screenshots go to the test's temporary folder, or to
``$WIKI_SCREENSHOTS`` when set (to look at them).
"""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("WIKI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
