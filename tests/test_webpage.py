"""The search web page in headless Chromium (selenium + chromium-driver): type, see results.

Slow and optional: skips with a message when chromium, chromedriver or selenium is absent
(Debian: `apt-get install chromium chromium-driver`; `pip install selenium`).
"""

import shutil
import tempfile
import threading

import pytest

from dualencoder.search.build import build_index
from dualencoder.search.index import EmbeddingIndex
from dualencoder.search import server as server_lib
from test_index import FakeEncoder, make_images

pytestmark = pytest.mark.slow


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary, driver = _chromium(), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium and chromedriver are not installed "
                    "(apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver), options=options)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_search_page_shows_result_thumbnails(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 10)
    enc = FakeEncoder()
    build_index(enc, out, images=images, progress=False)
    service = server_lib.RetrievalService(EmbeddingIndex.open(out), enc)
    httpd = server_lib.make_server(service, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{httpd.server_address[1]}/")
        box = browser.find_element(By.ID, "q")
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys("5")
        box.send_keys("cars on the street at night", Keys.ENTER)
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.result img")) == 5)
        # Every thumbnail actually loaded (decoded by the browser, non-zero size).
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('figure.result img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"))
        captions = [f.text for f in browser.find_elements(By.CSS_SELECTOR, "figure.result figcaption")]
        expected = service.search(q="cars on the street at night", k=5)["results"]
        assert [c.splitlines()[0] for c in captions] == \
            [f"{r['rank']}. {r['score']:.3f}" for r in expected]
        assert "5 results" in browser.find_element(By.ID, "status").text
        # An empty query is refused on the page, a bad k by the server (shown as an error).
        box.clear()
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: "error" in d.find_element(By.ID, "status").text)
        browser.execute_script("document.getElementById('k').value = '0'")
        box.send_keys("car", Keys.ENTER)
        wait.until(lambda d: "k must be" in d.find_element(By.ID, "status").text)
        # Clicking a thumbnail searches for similar images: that image comes first.
        browser.execute_script("document.getElementById('k').value = '3'")
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.result img")) == 3)
        first = browser.find_elements(By.CSS_SELECTOR, "figure.result")[1]
        path = first.find_element(By.TAG_NAME, "img").get_attribute("alt")
        first.find_element(By.TAG_NAME, "img").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "figure.result img")[0]
                   .get_attribute("alt") == path)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
