"""Screenshot the photo-search page for a query (headless Chromium via selenium).

    python scripts/screenshot_search_page.py --index idx/demo --query "a red circle" \
        --out docs/images/search_page.png

Serves the index on a free loopback port with its recorded model, types the query into the
page, waits for the results and saves a PNG. Needs `apt-get install chromium chromium-driver`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from records.machine import tensorflow_defaults  # noqa: E402


def serve(index_dir: str):
    from dualencoder.cli.retrieval import load_encoder
    from dualencoder.search import server
    from dualencoder.search.index import EmbeddingIndex

    index = EmbeddingIndex.open(index_dir)
    service = server.RetrievalService(index, load_encoder(index.model_path))
    httpd = server.make_server(service, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def screenshot(url: str, query: str, k: int, out: str, size=(1200, 760)) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-dev-shm-usage", f"--window-size={size[0]},{size[1]}",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)
        k_box = driver.find_element(By.ID, "k")
        k_box.clear()
        k_box.send_keys(str(k))
        driver.find_element(By.ID, "q").send_keys(query, Keys.ENTER)
        WebDriverWait(driver, 60).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.result img")) == k)
        WebDriverWait(driver, 30).until(lambda d: all(d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img)
            for img in d.find_elements(By.CSS_SELECTOR, "figure.result img")))
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        driver.save_screenshot(out)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--index", required=True, help="an index built with retrieval.py index")
    p.add_argument("--query", required=True, help="the text query to type")
    p.add_argument("-k", type=int, default=12, help="results to show")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    tensorflow_defaults()
    httpd = serve(args.index)
    try:
        screenshot(f"http://127.0.0.1:{httpd.server_address[1]}/", args.query, args.k, args.out)
    finally:
        httpd.shutdown()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
