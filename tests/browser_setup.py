"""Where tests/test_app_browser.py finds Debian's Chromium and its driver, and what it does without them."""

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
NO_BROWSER = f"no {CHROMIUM} or {CHROMEDRIVER} (Debian's chromium): apt-get install chromium chromium-driver"


def browser_outcome(found: bool, environ) -> str:
    """With Chromium and its driver, "run"; without them "skip" (one line: how to install them), except
    under CI (CI=true), which installs them: "fail", since a skip there would hide the browser tests."""
    if found:
        return "run"
    return "fail" if environ.get("CI", "").lower() in ("1", "true", "yes") else "skip"
