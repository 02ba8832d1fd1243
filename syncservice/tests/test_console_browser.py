"""The console in a real browser: Debian's headless Chromium against gunicorn with debug off, on PostgreSQL.

The pages are looked at as an operator sees them: the admin styled by its own stylesheet, Swagger UI drawing
the operations, the request list at 1366×768 without horizontal scrolling, the dashboard's charts, and a
failure that a retry through the API leaves readable in the API, the admin and the audit trail.

The data comes from the real pipeline (the stage commands, the local backends and their failure injection),
run in this process against the test database; gunicorn serves that same database.
"""

import os
import shutil
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from django.db import connection

from syncservice.models import AccountCreationRequest

from .fixtures import make_users, requires_postgres, run_pipeline, submit
from .test_production_server import gunicorn_server, manage, production_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres, requires_postgres,
              pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]

# Debian's packages by default; another build of the same pair can be named.
CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BINARY", "/usr/bin/chromedriver")
STAFF_PASSWORD = "pw-for-browser-tests-only"


def chromium_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-dev.txt)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through chromedriver, with a fresh profile and nothing that calls out."""
    missing = chromium_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the browser tests: {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--no-proxy-server", "--window-size=1366,768",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory, django_db_setup, django_db_blocker):
    """gunicorn with the production settings (debug off, collectstatic into its own STATIC_ROOT) serving the
    test database this process writes to."""
    tmp_path = tmp_path_factory.mktemp("console")
    database = connection.settings_dict
    env = production_env(tmp_path)
    env.update(DATABASE_URL=f"postgres://{database['USER']}@{database['HOST'] or '127.0.0.1'}:"
                            f"{database['PORT'] or 5432}/{database['NAME']}",
               # Plain http on loopback, as a browser on the same machine would reach it.
               DJANGO_SECURE_SSL_REDIRECT="0")
    manage("collectstatic", "--noinput", env=env)
    with gunicorn_server(env, tmp_path / "gunicorn.log", threads=8) as url:
        yield url


@pytest.fixture
def operator(db):
    return get_user_model().objects.create_superuser("console-ops", "ops@example.com", STAFF_PASSWORD)


def log_in(browser, server: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("console-ops")
    browser.find_element(By.NAME, "password").send_keys(STAFF_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, lambda: "/admin/login/" not in browser.current_url, "the login")


def wait_for(browser, condition, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} at {browser.current_url}")


def no_horizontal_scroll(browser) -> tuple[int, int]:
    return browser.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth];")


@pytest.fixture
def failed_then_retried(hr_caller, settings, server):
    """A request where WeLink refused TEST002, then retried through the API on gunicorn once WeLink was fixed."""
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"002$"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]
    request_id = submit(hr_caller)
    submit(hr_caller, businessKey="COMPLETE", userList=make_users(3, "OK"))
    run_pipeline()
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = ""
    with requests.Session() as session:
        session.trust_env = False
        session.headers["Authorization"] = f"Bearer {hr_caller.token}"
        failed = session.get(f"{server}/account-creation/requests/{request_id}/", timeout=30).json()
        assert failed["status"] == "partial_failed", failed
        retried = session.post(f"{server}/account-creation/requests/{request_id}/retry/", timeout=30)
        assert retried.status_code == 200, retried.text
        run_pipeline()
        done = session.get(f"{server}/account-creation/requests/{request_id}/", timeout=30).json()
    return request_id, failed, done


def test_the_admin_is_styled_by_its_own_stylesheet(browser, server, operator):
    from selenium.webdriver.common.by import By

    log_in(browser, server)
    browser.get(f"{server}/admin/")
    header = browser.find_element(By.ID, "header")
    # Django's admin stylesheet gives the header its colour and the body its font; unstyled, both are defaults.
    background = header.value_of_css_property("background-color")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent"), background
    sheets = browser.execute_script("return [...document.styleSheets].map(s => s.href).filter(Boolean);")
    assert any("/static/admin/css/base." in href for href in sheets), sheets
    assert browser.execute_script(
        "return [...document.styleSheets].some(s => s.href && s.href.includes('/static/admin/css/base.')"
        " && s.cssRules.length > 50);")


def test_swagger_ui_renders_the_operations(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/api/docs/")
    operations = wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock"), "Swagger UI")
    paths = {op.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text for op in operations}
    assert any("create_accounts" in path for path in paths), paths
    assert len(operations) >= 10


def test_the_request_list_at_1366_shows_badge_progress_and_failed_count_without_scrolling(
        browser, server, operator, failed_then_retried, hr_caller, settings, tmp_path):
    from selenium.webdriver.common.by import By

    # One more partly failed request, left failed: the list shows a red part and a failed count.
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^BAD"
    left = submit(hr_caller, businessKey="LEFT", userList=make_users(2, "BAD") + make_users(2, "FINE"))
    run_pipeline()
    browser.set_window_size(1366, 768)
    log_in(browser, server)
    browser.get(f"{server}/admin/syncservice/accountcreationrequest/")

    scroll_width, inner_width = no_horizontal_scroll(browser)
    assert scroll_width <= inner_width, (scroll_width, inner_width)
    # Nor does the table scroll inside its own box, which the admin lets overflow.
    table_box = browser.execute_script(
        "const box = document.querySelector('#changelist .results'); return [box.scrollWidth, box.clientWidth];")
    assert table_box[0] <= table_box[1], table_box
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr") if left in r.text)
    badge = row.find_element(By.CSS_SELECTOR, ".aps-badge")
    assert badge.text == "部分失败" and badge.is_displayed()
    assert badge.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"
    bar = row.find_element(By.CSS_SELECTOR, ".aps-progress-bar")
    ok, bad = (row.find_element(By.CSS_SELECTOR, f".aps-progress-{part}") for part in ("ok", "bad"))
    assert bar.is_displayed() and ok.size["width"] > 0 and bad.size["width"] > 0
    assert abs(ok.size["width"] - bad.size["width"]) <= 1  # two of four done, two failed
    assert row.find_element(By.CSS_SELECTOR, ".aps-progress-text").text == "2/4"
    failed = row.find_element(By.CSS_SELECTOR, ".aps-failed-count")
    assert failed.text == "2" and failed.is_displayed()
    for element in (badge, bar, failed):  # on screen, not past its right edge
        assert element.rect["x"] + element.rect["width"] <= inner_width, element.rect
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        browser.save_screenshot(str(Path(os.environ["CONSOLE_SCREENSHOTS"]) / "requests-1366.png"))


def test_the_dashboard_draws_its_charts(browser, server, operator, failed_then_retried):
    from selenium.webdriver.common.by import By

    browser.set_window_size(1366, 768)
    log_in(browser, server)
    browser.get(f"{server}/admin/dashboard/")
    for name in ("finished-per-hour", "failure-reasons", "oldest-waiting"):
        chart = browser.find_element(By.CSS_SELECTOR, f'svg[data-chart="{name}"]')
        assert chart.is_displayed() and chart.size["width"] > 100, name
    bars = browser.find_elements(By.CSS_SELECTOR, 'svg[data-chart="finished-per-hour"] rect')
    assert bars and all(bar.size["height"] > 0 for bar in bars)
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        browser.set_window_size(1366, 1400)
        browser.save_screenshot(str(Path(os.environ["CONSOLE_SCREENSHOTS"]) / "dashboard.png"))


def test_a_retry_through_the_api_leaves_the_failure_in_the_api_the_admin_and_the_audit_list(
        browser, server, operator, failed_then_retried):
    from selenium.webdriver.common.by import By

    request_id, failed, done = failed_then_retried
    assert done["status"] == "completed"
    [history] = done["errorHistory"]
    assert history["retried"] is True and history["status"] == "partial_failed"
    assert history["reasons"] == failed["errorSummary"]["reasons"]
    assert "TEST002" in history["reasons"][0]["employeeNumbers"]

    log_in(browser, server)
    browser.get(f"{server}/admin/syncservice/accountcreationrequest/by-request-id/{request_id}/")
    pk = AccountCreationRequest.objects.get(request_id=request_id).pk
    assert browser.current_url.endswith(f"/admin/syncservice/accountcreationrequest/{pk}/change/")
    history_field = browser.find_element(By.CSS_SELECTOR, ".field-error_history_table")
    assert "部分失败" in history_field.text and "TEST002" in history_field.text
    assert history_field.find_elements(By.CSS_SELECTOR, "table.aps-summary td")

    browser.get(f"{server}/admin/syncservice/auditentry/?action__exact=request.retry")
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1 and request_id in rows[0].text
    assert "HR_SYSTEM" in rows[0].text and "API 客户端" in rows[0].text
