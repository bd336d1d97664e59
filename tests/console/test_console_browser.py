"""The web console in a real browser: Debian's Chromium, headless, driven by Selenium
through chromedriver, against a real relay and agent (docs/CONSOLE.md).

Covers sign-in (the form, and the platform's ``#token=`` link), the connector list and
its live status change when an agent stops, a connector's page, logs with filters and
live tail, a job's detail and first rows, rotate and revoke, the support role without
admin actions, and hostile text (names, log lines) shown as text under a strict CSP.

``MC_CONSOLE_SCREENSHOTS=docs/console`` saves each page's screenshot there (the pictures
in docs/CONSOLE.md come from this run).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Agent, Source, Stack, wait_until

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HOSTILE = "<img src=x onerror=window.__pwned=1>"
SHOTS = os.environ.get("MC_CONSOLE_SCREENSHOTS")

webdriver = pytest.importorskip("selenium.webdriver")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    if os.environ.get("MC_REQUIRE_SERVICES") == "1":
        raise RuntimeError("chromium and chromium-driver are not installed (.ci/run installs them)")
    pytest.skip("chromium and chromium-driver are not installed", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Agent]]:
    work = tmp_path_factory.mktemp("console")
    db = work / "erp.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, balance REAL)")
        con.executemany("INSERT INTO customers VALUES (?, ?, ?)",
                        [(1, "Ada", 120.5), (2, HOSTILE, 80.0), (3, "Linus", 0.0)])  # fmt: skip
    # One browser and this test's own polling share the tenant's admin and support budget
    # (100 a minute each by default): raised here, as for a busy support desk (docs/CONSOLE.md).
    many = "5000"
    st = Stack(work / "stack", tenant="console", extra_env={
        "MC_RELAY_RATE_LIMIT_ADMIN": many, "MC_RELAY_TENANT_RATE_LIMIT_ADMIN": many,
        "MC_RELAY_RATE_LIMIT_SUPPORT": many, "MC_RELAY_TENANT_RATE_LIMIT_SUPPORT": many})  # fmt: skip
    try:
        st.start_relay()
        agent = st.add_agent("Head office", [Source("erp", "sqlite", f"sqlite:///{db}")])
        yield st, agent
    finally:
        st.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, check: Callable[[Any], Any], what: str, timeout: float = 20) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: check(d), message=what)


def _open(driver: Any, st: Stack, role: str, to: str = "/connectors") -> None:
    assert st.relay is not None
    token = st.relay.token(st.tenant, role)
    _visit(driver, f"{st.relay.url}/console#token={token}&to={to}")


def _visit(driver: Any, url: str, *, ready: bool = True) -> None:
    """Load ``url`` as a new page (from about:blank, so a hash-only change reloads too)."""
    driver.get("about:blank")
    driver.get(url)
    if ready:
        _ready(driver)


def _go(driver: Any, hash_: str) -> None:
    before = driver.execute_script("return document.body.dataset.ready || ''")
    driver.execute_script("location.hash = arguments[0]", hash_)
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready || ''") != before, f"page {hash_}")


def _ready(driver: Any) -> None:
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready"), "the console to render")


def _shot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))


def _text(driver: Any, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def test_console_is_served_with_a_strict_policy_and_hashed_assets(stack: tuple[Stack, Agent]) -> None:
    st, _ = stack
    assert st.relay is not None
    with urllib.request.urlopen(f"{st.relay.url}/console", timeout=10) as resp:
        html = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert "<script>" not in html and "http" not in html.replace('"http://www.w3.org', "")  # no inline code, no CDN
    js = html.split('src="')[1].split('"')[0]
    assert js.startswith("/console/assets/console.") and js.endswith(".js")
    req = urllib.request.Request(st.relay.url + js, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Encoding"] == "gzip" and "immutable" in resp.headers["Cache-Control"]


def test_sign_in_with_the_form_and_see_the_connectors(stack: tuple[Stack, Agent], browser: Any) -> None:
    st, agent = stack
    assert st.relay is not None
    _visit(browser, f"{st.relay.url}/console")
    _shot(browser, "signin")
    browser.find_element(By.ID, "token").send_keys(st.relay.token(st.tenant, "admin"))
    browser.find_element(By.ID, "signin").click()
    row = f'tr[data-connector="{agent.connector_id}"]'
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{row} [data-status=online]"), "the agent online")
    assert "Head office" in _text(browser, row)
    assert "tenant console" in _text(browser, "#who") and "admin" in _text(browser, "#who")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{row} svg polyline"), "a CPU chart", timeout=30)
    _shot(browser, "connectors")


def test_hostile_names_and_log_lines_are_text(stack: tuple[Stack, Agent], browser: Any) -> None:
    st, agent = stack
    assert st.api is not None
    hostile = st.api.create_connector(HOSTILE)
    failing = st.api.submit(agent.connector_id, "erp", sql=f"SELECT * FROM [{HOSTILE}]")  # no such table: <img ...>
    assert st.api.wait_job(failing)["status"] == "failed"
    _open(browser, st, "admin")
    cell = f'tr[data-connector="{hostile["id"]}"] td a'
    assert _text(browser, cell) == HOSTILE
    wait_until(lambda: any(HOSTILE in line["message"] for line in st.api.logs(agent.connector_id)["logs"]),  # type: ignore[union-attr]
               20, what="the failure's log line at the relay")  # fmt: skip
    _go(browser, f"#/connectors/{agent.connector_id}/logs?level=WARNING")
    logs = _text(browser, "#logs")
    assert HOSTILE in logs
    _go(browser, f"#/jobs/{failing}")
    assert HOSTILE in _text(browser, "#job-error")
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert browser.execute_script("return window.__pwned") is None


def test_logs_filter_link_and_live_tail(stack: tuple[Stack, Agent], browser: Any) -> None:
    st, agent = stack
    assert st.api is not None
    first, _ = st.api.run_job(agent.connector_id, "erp", sql="SELECT id FROM customers")
    wait_until(lambda: st.api.logs(agent.connector_id, jobId=first["id"])["logs"], 20, what="job log lines")  # type: ignore[union-attr]
    _open(browser, st, "support", to=f"/connectors/{agent.connector_id}/logs")
    browser.find_element(By.ID, "job").send_keys(first["id"])
    browser.find_element(By.ID, "apply").click()
    _wait(browser, lambda d: "jobId=" in d.execute_script("return location.hash"), "the filter in the link")
    _ready(browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "#logs tbody tr")
    assert rows and all(first["id"] in r.text for r in rows)
    link = browser.find_element(By.ID, "permalink").get_attribute("href")
    assert f"jobId={first['id']}" in link  # reopening the link shows the same view
    _go(browser, f"#/connectors/{agent.connector_id}/logs?tail=1")
    second, _ = st.api.run_job(agent.connector_id, "erp", sql="SELECT name FROM customers")
    _wait(browser, lambda d: second["id"] in d.find_element(By.ID, "logs").text, "the new job's lines, tailed", 30)
    _shot(browser, "logs")


def test_a_jobs_timeline_error_and_first_rows(stack: tuple[Stack, Agent], browser: Any) -> None:
    st, agent = stack
    assert st.api is not None
    job, _ = st.api.run_job(agent.connector_id, "erp", sql="SELECT id, name, balance FROM customers ORDER BY id")
    _open(browser, st, "admin", to="/jobs")
    assert browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job["id"]}"] [data-status=succeeded]')
    _shot(browser, "jobs")
    _go(browser, f"#/jobs/{job['id']}")
    timeline = _text(browser, "#timeline")
    assert all(step in timeline for step in ("queued", "dispatched", "running", "succeeded"))
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#rows tbody tr"), "the first rows")
    rows = browser.find_elements(By.CSS_SELECTOR, "#rows tbody tr")
    assert len(rows) == 3 and "Ada" in rows[0].text and HOSTILE in rows[1].text
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []  # a result value stays text
    _shot(browser, "job")


def test_support_sees_no_admin_actions(stack: tuple[Stack, Agent], browser: Any) -> None:
    st, agent = stack
    _open(browser, st, "support", to=f"/connectors/{agent.connector_id}")
    assert browser.find_elements(By.ID, "raise") and not browser.find_elements(By.ID, "rotate")
    assert not browser.find_elements(By.ID, "revoke")
    browser.find_element(By.ID, "raise").click()
    _wait(browser, lambda d: "ships DEBUG lines" in d.find_element(By.ID, "banner").text, "the raise confirmed")


def test_rotate_shows_the_key_once_and_revoke_asks_first(stack: tuple[Stack, Agent], browser: Any) -> None:
    st, _ = stack
    assert st.api is not None
    spare = st.api.create_connector("Spare")
    _open(browser, st, "admin", to=f"/connectors/{spare['id']}")
    browser.find_element(By.ID, "rotate").click()
    key = _wait(browser, lambda d: d.find_elements(By.ID, "api-key"), "the new key")[0].text
    assert key.startswith("vmc_") and key != spare["apiKey"]
    _shot(browser, "connector")
    browser.find_element(By.ID, "revoke").click()
    browser.switch_to.alert.dismiss()  # asked first: no, nothing happens
    assert st.api.connector(spare["id"])["status"] == "pending"
    browser.find_element(By.ID, "revoke").click()
    browser.switch_to.alert.accept()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#connector-status [data-status=revoked]"), "revoked")
    assert st.api.connector(spare["id"])["status"] == "revoked"


def test_status_changes_live_when_an_agent_stops(stack: tuple[Stack, Agent], browser: Any, tmp_path: Path) -> None:
    st, _ = stack
    other = st.add_agent("Branch", [])
    _open(browser, st, "admin")
    row = f'tr[data-connector="{other.connector_id}"]'
    assert browser.find_elements(By.CSS_SELECTOR, f"{row} [data-status=online]")
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.live") == "yes", "the events stream")
    assert other.proc is not None
    other.proc.stop()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{row} [data-status=offline]"),
          "the row to turn offline without a reload", 30)  # fmt: skip


def test_a_refusal_shows_the_apis_own_message(stack: tuple[Stack, Agent], browser: Any) -> None:
    """Revoked in another tab, then rotated here: the relay's 409 is shown as it said it."""
    st, _ = stack
    assert st.api is not None
    other = st.api.create_connector("Elsewhere")
    _open(browser, st, "admin", to=f"/connectors/{other['id']}")
    st.api.delete_connector(other["id"])
    browser.find_element(By.ID, "rotate").click()
    banner = _wait(browser, lambda d: d.find_element(By.ID, "banner").text, "the refusal")
    assert banner.startswith("CONNECTOR_REVOKED: ") and "revoked" in banner[len("CONNECTOR_REVOKED: "):]


def test_a_bad_token_link_is_refused_with_a_sentence(stack: tuple[Stack, Agent], browser: Any) -> None:
    st, _ = stack
    assert st.relay is not None
    _visit(browser, f"{st.relay.url}/console#token=not-a-token")
    assert "not a usable token" in browser.find_element(By.ID, "banner").text
    assert browser.find_elements(By.ID, "signin")  # back at the form


def test_search_filter_and_download(stack: tuple[Stack, Agent], browser: Any) -> None:
    st, agent = stack
    assert st.api is not None
    pending = st.api.create_connector("Warehouse Lagos")
    _open(browser, st, "admin")
    _go(browser, "#/connectors?q=lagos")
    shown = [r.get_attribute("data-connector") for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-connector]")]
    assert shown == [pending["id"]]
    _go(browser, "#/connectors?status=online")
    statuses = {e.get_attribute("data-status") for e in browser.find_elements(By.CSS_SELECTOR, "#connectors [data-status]")}
    assert statuses == {"online"}
    # Download: the lines shown, as NDJSON (the blob handed to the browser is read back).
    _go(browser, f"#/connectors/{agent.connector_id}/logs?level=WARNING")
    browser.execute_script("window.__blobs = []; const make = URL.createObjectURL;"
                           "URL.createObjectURL = (b) => { window.__blobs.push(b); return make(b); };")  # fmt: skip
    browser.find_element(By.ID, "download").click()
    text = browser.execute_async_script("const done = arguments[0]; window.__blobs[0].text().then(done);")
    lines = [line for line in text.splitlines() if line]
    shown_rows = browser.find_elements(By.CSS_SELECTOR, "#logs tbody tr")
    assert lines and len(lines) == len(shown_rows)
    assert all('"level":"warning"' in line or '"level":"error"' in line for line in lines)


def test_a_token_the_relay_refuses_signs_out_with_its_message(stack: tuple[Stack, Agent], browser: Any) -> None:
    """A well-formed token the relay does not accept (another secret, or expired): the
    first call answers 401 and the console is back at the form, saying why."""
    import jwt

    st, _ = stack
    assert st.relay is not None
    forged = jwt.encode({"sub": "eve", "tenantId": st.tenant, "role": "admin", "exp": 4102444800},
                        "not-the-relays-secret-0123456789abcdef", algorithm="HS256")  # fmt: skip
    _visit(browser, f"{st.relay.url}/console#token={forged}", ready=False)
    _wait(browser, lambda d: d.find_elements(By.ID, "signin"), "the sign-in form")
    banner = _wait(browser, lambda d: d.find_element(By.ID, "banner").text, "the reason")
    assert banner.startswith("UNAUTHORIZED: "), banner
    assert browser.execute_script("return sessionStorage.length") == 0


UNLABELLED = """return [...document.querySelectorAll('main input, main select, main textarea, main button')]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
  .map((el) => el.id || el.outerHTML.slice(0, 60));"""


def test_keyboard_sign_in_and_every_control_labelled(stack: tuple[Stack, Agent], browser: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    st, agent = stack
    assert st.relay is not None
    _visit(browser, f"{st.relay.url}/console")
    assert browser.execute_script(UNLABELLED) == []
    box = browser.switch_to.active_element  # the form focuses the token box
    assert box.get_attribute("id") == "token"
    box.send_keys(st.relay.token(st.tenant, "admin"))
    box.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "signin"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#connectors tbody tr"), "the list, signed in by keyboard")
    assert browser.execute_script(UNLABELLED) == []  # the list
    for view in ("#/jobs", f"#/connectors/{agent.connector_id}", f"#/connectors/{agent.connector_id}/logs"):
        _go(browser, view)
        assert browser.execute_script(UNLABELLED) == [], view
