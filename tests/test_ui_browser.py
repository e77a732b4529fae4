"""The web UI as people use it: headless Chromium opens the page, enters a prompt, clicks Generate, sees an image.

Chromium and its WebDriver come from Debian (`scripts/install_browser.sh`, run here when they are missing; it needs
root, as CI has). The browser may reach 127.0.0.1 only: every other host name resolves to nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium: no usage statistics
pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from meissonic.interfaces.ui import build_ui, launch  # noqa: E402
from meissonic.testing import build_tiny_pipeline_folder  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
INSTALLER = Path(__file__).resolve().parents[1] / "scripts" / "install_browser.sh"


def ensure_browser() -> None:
    """Install Debian's chromium + chromium-driver if missing (bounded time); skip with the reason if impossible."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and this system has no apt-get to install it")
    try:
        result = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("installing chromium took more than 10 minutes")
    if result.returncode or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"chromium could not be installed: {(result.stderr or result.stdout).strip()[-300:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    ensure_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1600", f"--user-data-dir={tmp_path / 'profile'}",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(tmp_path):
    from meissonic.pipelines import MeissonicPipeline

    pipe = MeissonicPipeline.from_pretrained(build_tiny_pipeline_folder(tmp_path / "tiny"))
    demo = build_ui(pipe)
    _, url = launch(demo, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    try:
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        demo.close()


def set_number(driver, elem_id: str, value: int) -> None:
    """Type a value into a slider's number box (and leave it, so Gradio reads it)."""
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.clear()
    box.send_keys(str(value))
    box.send_keys("\t")


def test_generate_an_image_in_the_browser(browser, page):
    wait = WebDriverWait(browser, 60)
    browser.get(page)
    prompt = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#text2image-prompt textarea")))
    prompt.send_keys("a red circle above a blue square")
    set_number(browser, "text2image-steps", 4)  # the default 48 steps work too, only slower
    browser.find_element(By.ID, "text2image-generate").click()
    image = wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "#results img")))
    assert image.get_attribute("src")
    width = browser.execute_script("return arguments[0].naturalWidth", image)
    assert width == 32  # the tiny model's default resolution, loaded from the server
    settings = browser.find_element(By.ID, "result-settings").text
    assert "a red circle above a blue square" in settings and "steps" in settings
