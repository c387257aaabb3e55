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


@pytest.fixture
def site(tmp_path):
    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 10)
    enc = FakeEncoder()
    build_index(enc, out, images=images, progress=False)
    service = server_lib.RetrievalService(EmbeddingIndex.open(out), enc)
    httpd = server_lib.make_server(service, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "service": service,
               "images": images}
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _shown(driver):
    return [(f.find_element("css selector", "figcaption").text.splitlines()[0],
             int(f.get_attribute("data-id")))
            for f in driver.find_elements("css selector", "figure.result")]


def _expected(results):
    return [(f"{r['rank']}. {r['score']:.3f}", r["id"]) for r in results]


def _all_thumbnails_loaded(driver):
    return driver.execute_script(
        "return [...document.querySelectorAll('figure.result img')]"
        ".every(i => i.complete && i.naturalWidth > 0)")


def test_search_page(site, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base, service = site["url"], site["service"]
    wait = WebDriverWait(browser, 20)
    browser.set_window_size(1200, 900)
    browser.get(base + "/")
    # The start page says what the index holds.
    wait.until(lambda d: "10 photos" in d.find_element(By.ID, "info").text)
    assert "indexed" in browser.find_element(By.ID, "info").text
    assert "search 10 photos" in browser.find_element(By.ID, "status").text

    # A text query: results, URL state, paging with "Show more".
    query = "cars on the street at night"
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("4")
    browser.find_element(By.ID, "q").send_keys(query, Keys.ENTER)
    wait.until(lambda d: len(_shown(d)) == 4 and _all_thumbnails_loaded(d))
    everything = service.search(q=query, k=10)["results"]
    assert _shown(browser) == _expected(everything[:4])
    assert "q=cars+on+the+street+at+night" in browser.current_url and "k=4" in browser.current_url
    assert "Showing 4 of 10 results" in browser.find_element(By.ID, "status").text
    more = browser.find_element(By.ID, "more")
    for n in (8, 10):
        more.click()
        wait.until(lambda d, n=n: len(_shown(d)) == n)
    assert _shown(browser) == _expected(everything) and not more.is_displayed()
    browser.save_screenshot(str(tmp_path / "results.png"))

    # A click opens the photo full size; "more like this" is a separate button.
    first = everything[0]
    browser.find_elements(By.CSS_SELECTOR, "figure.result img")[0].click()
    viewer = browser.find_element(By.ID, "viewer")
    wait.until(lambda d: viewer.is_displayed() and d.execute_script(
        "const i = document.getElementById('full'); return i.complete && i.naturalWidth"))
    assert browser.execute_script("return document.getElementById('full').naturalWidth") == 40
    assert first["path"] in browser.find_element(By.ID, "full-caption").text
    shot = tmp_path / "search_page.png"
    browser.save_screenshot(str(shot))
    print(f"screenshots: {shot} and {tmp_path / 'results.png'}")
    browser.find_element(By.ID, "more-like").click()
    wait.until(lambda d: f"similar={first['id']}" in d.current_url and len(_shown(d)) == 4)
    assert not viewer.is_displayed()
    similar = service.search(image_id=first["id"], k=4, exclude_self=True)["results"]
    assert _shown(browser) == _expected(similar)
    assert first["id"] not in [i for _, i in _shown(browser)]  # not its own first hit
    assert browser.find_element(By.ID, "query-photo").is_displayed()

    # Back and forward replay the queries of the URL.
    browser.back()
    wait.until(lambda d: "q=cars" in d.current_url and _shown(d) == _expected(everything[:4]))
    assert browser.find_element(By.ID, "q").get_attribute("value") == query
    browser.forward()
    wait.until(lambda d: _shown(d) == _expected(similar))
    # A shared link runs its query on load.
    browser.get(base + "/?q=red+car&k=3")
    wait.until(lambda d: _shown(d) == _expected(service.search(q="red car", k=3)["results"]))
    assert browser.find_element(By.ID, "q").get_attribute("value") == "red car"

    # Query by uploading a photo: the photo itself comes first.
    index = service.index
    photo = site["images"] / index.paths[6]
    browser.execute_script("document.getElementById('upload').style.display = 'block'")
    browser.find_element(By.ID, "upload").send_keys(str(photo))
    wait.until(lambda d: "results for photo" in d.find_element(By.ID, "status").text)
    assert _shown(browser)[0][1] == 6 and len(_shown(browser)) == 3

    # Errors: an empty query on the page, a bad k from the server.
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: "error" in d.find_element(By.ID, "status").text)
    browser.get(base + "/?q=car&k=0")
    wait.until(lambda d: "k must be" in d.find_element(By.ID, "status").text)
