"""The web demo in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (no browser download). Two visitors train different classes at the same time; a reload
lists both tokens; the loss and accuracy curves grow during training; a bad number is one line.

docs/app.png comes from the second test, which trains class 2 ("stick", the digit 1) with the page's
defaults: `DISCO_APP_SCREENSHOT=docs/app.png python -m pytest tests/test_app_browser.py` runs it and
writes the screenshot there (about 90 s; without the variable the screenshot stays in a temporary folder)."""

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from browser_setup import CHROMEDRIVER, CHROMIUM, NO_BROWSER, browser_outcome
from test_app import start_app, stop_app

OUTCOME = browser_outcome(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), os.environ)
# A module-level skip mark: pytest folds the skips into one line naming the install command.
pytestmark = [pytest.mark.slow, *([pytest.mark.skip(reason=NO_BROWSER)] if OUTCOME == "skip" else [])]

FLAGS = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
FLAGS += " --disable-component-update --disable-sync"
# Budgets on an otherwise idle 2-core machine, in seconds; stretched by the measured load when other
# work shares the cores (load average per core above 1).
BUDGET = dict(page=15, train_and_compare=90)


def load_factor() -> float:
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


@pytest.fixture
def browsers(tmp_path):
    """Opens browsers (each a visitor of its own); all are closed at the end."""
    if OUTCOME == "fail":
        pytest.fail(NO_BROWSER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opened = []

    def open_browser(size: str = "1280,1200"):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS.split(), f"--window-size={size}", f"--user-data-dir={tmp_path / f'profile{len(opened)}'}"]:
            options.add_argument(flag)
        opened.append(webdriver.Chrome(service=Service(CHROMEDRIVER), options=options))
        return opened[-1]

    yield open_browser
    for driver in opened:
        driver.quit()


@pytest.fixture
def app_url(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc, url, seconds = start_app(out)  # the defaults: the digits world, the page's epochs
    yield url, seconds
    stop_app(proc)


def wait_for(driver, condition, seconds: float = 600):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.25).until(condition)


def text_of(driver, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, elem_id).text


def type_into(driver, css: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, css), 60)
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE, text)


def options_of(driver, elem_id: str, typed: str | None = None, until=None) -> list:
    """A dropdown's options as the visitor sees them after clicking it (or typing into it), once their
    labels satisfy `until` (default: every label holds what was typed). The list can still show the
    previous value's filter for a moment after typing, so a caller that expects certain options says so."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By

    if typed is None:
        driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input").click()
    else:
        type_into(driver, f"#{elem_id} input", typed)
    until = until or (lambda labels: all(typed is None or typed in label for label in labels))
    seen = []

    def listed(d):
        options = d.find_elements(By.CSS_SELECTOR, f"#{elem_id} [role=option]")
        seen[:] = [o.get_attribute("aria-label") for o in options]
        return options if seen and until(seen) else False

    try:
        return wait_for(driver, listed, 20)
    except TimeoutException:
        raise AssertionError(f"#{elem_id} lists {seen}") from None


def pick_class(driver, choice: str) -> None:
    options = options_of(driver, "class", choice.split(": ")[1], until=lambda labels: choice in labels)
    next(o for o in options if o.get_attribute("aria-label") == choice).click()


def open_tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    tab = wait_for(
        driver, lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == name]
    )
    tab[0].click()


def error_message(driver) -> str:
    """The page's error notice: its title "Error", then the message."""
    from selenium.webdriver.common.by import By

    def shown(d):
        texts = [t.text.strip() for t in d.find_elements(By.CSS_SELECTOR, ".toast-body")]
        return next((t for t in texts if t.startswith("Error") and len(t.splitlines()) > 1), False)

    return wait_for(driver, shown, 60).splitlines()[-1]


def curve_drawn(driver, elem_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return bool(driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} canvas, #{elem_id} svg.marks"))


def all_in_view(driver, elem_id: str) -> bool:
    """A gallery shows every image without a scroll box of its own."""
    script = "const w = document.querySelector(arguments[0]); return w.scrollHeight <= w.clientHeight + 1;"
    return driver.execute_script(script, f"#{elem_id} .grid-wrap")


def accuracies(summary: str, role: str) -> tuple[int, int]:
    m = re.search(rf"^{role} \(.*\): baseline (\d+)% → token (\d+)%$", summary, flags=re.M)
    assert m, summary
    return int(m[1]), int(m[2])


def compared(driver) -> str:
    return wait_for(driver, lambda d: (t := text_of(d, "compare-summary")) and "→ token" in t and t)


def trained_token(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "#trained input, #trained textarea").get_attribute("value")


def test_two_visitors_train_and_a_reload_lists_both_tokens(browsers, app_url):
    from selenium.webdriver.common.by import By

    url, _ = app_url
    first, second = browsers(), browsers()
    for visitor in (first, second):
        visitor.get(url)
    # A bad number: the one-line message that an out-of-range number gets, nothing else.
    type_into(first, "#epochs input", "abc")
    first.find_element(By.ID, "train-btn").click()
    assert error_message(first) == "epochs 'abc': must be a whole number in 1..100 (the server's --max_epochs)"

    type_into(first, "#epochs input", "3")
    first.find_element(By.ID, "train-btn").click()  # 2: stick, the page's default class
    pick_class(second, "1: loop")
    type_into(second, "#epochs input", "3")
    second.find_element(By.ID, "train-btn").click()  # waits in the queue: one job at a time

    status = wait_for(first, lambda d: (t := text_of(d, "train-status")).startswith("epoch") and t)
    assert re.match(r"epoch [123] of 3: loss ", status)  # live progress, epoch by epoch, counted from 1
    assert wait_for(first, lambda d: curve_drawn(d, "curve-loss") and curve_drawn(d, "curve-accuracy"), 60)
    summaries = [compared(visitor) for visitor in (first, second)]  # each page moves on to its comparison
    tokens = [trained_token(visitor) for visitor in (first, second)]
    assert tokens[0].startswith("2_stick/e3_lr0.06_s35_g15_") and tokens[1].startswith("1_loop/e3_lr0.06_s35_g15_")
    assert "“A photo of S_c stick”" in summaries[0] and "“A photo of S_c loop”" in summaries[1]
    labels = [
        first.find_element(By.CSS_SELECTOR, f"#{k}-images [data-testid=block-label]").text
        for k in ("baseline", "token")
    ]
    assert labels == ["A photo of a stick", "A photo of S_c stick"]
    seeds = int(re.search(r"(\d+) seeds", summaries[0])[1])
    assert len(first.find_elements(By.CSS_SELECTOR, "#token-images img")) == seeds == 32
    assert all_in_view(first, "baseline-images") and all_in_view(first, "token-images")

    first.refresh()  # a reload reads the output folder again: both visitors' tokens are offered
    open_tab(first, "Compare")
    assert options_of(first, "cmp-run", until=lambda labels: set(tokens) <= set(labels))


def test_train_class_2_with_the_page_defaults_and_compare(browsers, app_url, tmp_path):
    from selenium.webdriver.common.by import By

    url, page_seconds = app_url
    factor = load_factor()
    browser = browsers("1280,1500")
    browser.get(url)
    # Searchable; a repeated name lists both of its indices.
    options = options_of(browser, "class", "stick", until=lambda labels: labels == ["2: stick", "8: stick"])
    options[0].click()
    epochs = int(browser.find_element(By.CSS_SELECTOR, "#epochs input").get_attribute("value"))
    start = time.time()
    browser.find_element(By.ID, "train-btn").click()
    status = wait_for(browser, lambda d: (t := text_of(d, "train-status")).startswith("epoch") and t)
    assert status.startswith(f"epoch 1 of {epochs}: loss ")
    summary = compared(browser)
    seconds = time.time() - start
    baseline, token = accuracies(summary, "classifier")
    judge = accuracies(summary, "eval_classifier")
    time.sleep(1)  # let the last images paint before the screenshot
    browser.save_screenshot(str(tmp_path / "app.png"))
    print(f"page answered {page_seconds:.1f} s after start; train ({epochs} epochs) + comparison {seconds:.1f} s;")
    print(f"classifier {baseline}% -> {token}%, eval_classifier {judge[0]}% -> {judge[1]}%; load factor {factor:.2f}")
    if os.environ.get("DISCO_APP_SCREENSHOT"):  # retake docs/app.png
        shutil.copy(tmp_path / "app.png", os.environ["DISCO_APP_SCREENSHOT"])
    # The page's epochs lift class 2 above the ambiguous word.
    assert token > baseline and judge[1] > judge[0], summary
    assert page_seconds < BUDGET["page"] * factor, page_seconds
    assert seconds < BUDGET["train_and_compare"] * factor, seconds
