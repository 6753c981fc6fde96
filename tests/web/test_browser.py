"""The dashboard in a real browser: headless Chromium (Debian's package, driven through selenium) loads every
page against a real database served by the app on a free port, takes a screenshot of each, sees the queues
page refresh itself, performs a retry and a cancel through the confirmation pages, and a bulk retry through
its preview."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgsched import db
from tests.web.conftest import seed

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "Chromium and its driver are not installed (apt-get install chromium chromium-driver); "
        "the browser test cannot run",
        allow_module_level=True,
    )

import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from pgsched.web.app import create_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served(dsn: str) -> Iterator[str]:
    """The dashboard on the test's database, served by uvicorn in a thread; yields its base URL."""
    app = create_app(dsn, refresh_s=0.5)
    app.state.database.snapshot_every_s = 0.2
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the dashboard did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    app.state.database.close()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, nothing fetched from the network."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let selenium look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def state_of(conn: db.Connection, job_id: int) -> str:
    return conn.row("SELECT state::text FROM sched_jobs_all WHERE id = %s", (job_id,))[0]  # type: ignore[index]


def test_every_page_renders_and_retry_and_cancel_work(
    served: str, browser: webdriver.Chrome, conn: db.Connection, tmp_path: Path
) -> None:
    ids = seed(conn)
    wait = WebDriverWait(browser, 15)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    pages = {
        "queues": ("/", "h2", "workers"),
        "jobs": ("/queues/web", "h1", "queue web"),
        "jobs-failed": ("/queues/web?state=failed", "h1", "queue web"),
        "job": (f"/jobs/{ids['waiting']}", "h1", f"job {ids['waiting']}"),
        "workers": ("/workers", "h1", "workers"),
        "schedules": ("/schedules", "h1", "schedules"),
        "failures": ("/failures", "h1", "failures of the last hour"),
    }
    for name, (path, tag, heading) in pages.items():
        browser.get(served + path)
        assert browser.find_element(By.TAG_NAME, tag).text.startswith(heading), name
        assert browser.find_element(By.CSS_SELECTOR, "link[rel=stylesheet]")
        # The stylesheet, served by the app, applies: the header bar is dark.
        header = browser.find_element(By.TAG_NAME, "header")
        assert header.value_of_css_property("background-color") == "rgba(29, 35, 48, 1)", name
        assert browser.save_screenshot(str(shots / f"{name}.png")), name
    print(f"screenshots in {shots}")

    # The queues page refreshes itself: a job added to a new queue shows up without a reload.
    browser.get(served + "/")
    conn.run("INSERT INTO sched_jobs (queue, task) VALUES ('arrived', 'mail.send')")
    wait.until(lambda d: "arrived" in d.find_element(By.ID, "live").text)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # no script error, no resource or policy refused

    # Retry the failed job through its page and the confirmation.
    browser.get(served + f"/jobs/{ids['failed']}")
    browser.find_element(By.ID, "retry").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == f"retry job {ids['failed']}?")
    assert state_of(conn, ids["failed"]) == "failed"
    browser.find_element(By.ID, "confirm").click()
    wait.until(lambda d: d.find_element(By.ID, "done").text == "retried: queued")
    assert state_of(conn, ids["failed"]) == "queued"

    # Cancel the queued job (and, with it, the job waiting on it).
    browser.get(served + f"/jobs/{ids['queued']}")
    browser.find_element(By.ID, "cancel").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == f"cancel job {ids['queued']}?")
    browser.find_element(By.ID, "confirm").click()
    wait.until(lambda d: d.find_element(By.ID, "done").text.startswith("cancelled"))
    browser.save_screenshot(str(shots / "cancelled.png"))
    assert state_of(conn, ids["queued"]) == "cancelled"
    assert state_of(conn, ids["waiting"]) == "cancelled"


def test_a_bulk_retry_from_the_failures_page_previews_then_retries(
    served: str, browser: webdriver.Chrome, conn: db.Connection, tmp_path: Path
) -> None:
    ids = seed(conn)
    wait = WebDriverWait(browser, 15)
    browser.get(served + "/failures")
    links = browser.find_elements(By.CSS_SELECTOR, "a.bulk")
    # One group per queue with a failure: web and other.
    assert len(links) == 2
    web = next(link for link in links if "queue=web" in link.get_attribute("href"))
    web.click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "bulk retry")
    assert browser.find_element(By.ID, "bulk-count").text.startswith("1 job(s) match")
    assert state_of(conn, ids["failed"]) == "failed"  # the preview changed nothing
    assert browser.save_screenshot(str(tmp_path / "bulk-preview.png"))
    print(f"screenshot in {tmp_path / 'bulk-preview.png'}")
    browser.find_element(By.ID, "confirm").click()
    wait.until(lambda d: d.find_element(By.ID, "bulk-done").text.startswith("retried 1 of 1 matching job(s)"))
    assert state_of(conn, ids["failed"]) == "queued"
    assert conn.row("SELECT state::text FROM sched_jobs_all WHERE queue = 'other'") == ("failed",)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
