"""How the SAP Business One adapter fails when a customer's Service Layer misbehaves: every
failure maps to the contract's job error code (retryable where retrying may help), with
SAP's words and never a password or a session id in the message or the log."""

from __future__ import annotations

import datetime
import email.utils
import logging
import time
from typing import Any

import pytest

from agent.sources import sap_b1_session
from agent.sources.sap_b1 import MAX_EMPTY_PAGES, SapB1Source
from agent.sources.sap_b1_session import MAX_BUSY_RETRIES, MAX_RELOGINS, retry_after
from shared.errors import JobError
from tests.fakes.sap_b1 import COMPANY, USER, Canned, SapB1State, sap_error, start_fake_sap_b1
from tests.fakes.tls import make_tls

from .conftest import join, run_in_thread, wait_for


def make(url: str, password: str = "s3cret!", **options: str) -> SapB1Source:
    opts = {"company_db": COMPANY, "username": USER, **options}
    return SapB1Source("erp", "sap_b1", url, password=password, options=opts)


def read_all(source: SapB1Source, request: dict[str, Any]) -> list[list[Any]]:
    _, batches = source.query(request, 1000)
    return [row for b in batches for row in b]


def gets(state: SapB1State) -> list[dict[str, Any]]:
    return [e for e in state.log if e["method"] == "GET"]


ALL_ITEMS = [f"A{i:04d}" for i in range(1, 96)]
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


# ------------------------------------------------------------------ login


@pytest.mark.parametrize(
    "canned",
    [
        # A Service Layer whose company database or license service is down answers 500.
        Canned(500, sap_error(-1, "Internal error: connection to the database failed")),
        Canned(502, HTML_502, "text/html"),
        Canned(503, "Service Unavailable", "text/plain"),
    ],
    ids=["500-sap-body", "502-proxy-html", "503-plain"],
)
def test_login_answered_5xx_is_source_unavailable_and_retryable(sap, canned):
    """A 5xx to the login is the server's trouble, not the credentials': SOURCE_UNAVAILABLE,
    retryable (before, a 500 was AUTH_FAILED and the job was never retried)."""
    url, state = sap
    state.canned_logins.append(canned)
    with pytest.raises(JobError) as err:
        make(url).test()
    assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable
    assert f"HTTP {canned.status}" in err.value.message


def test_login_refused_with_401_stays_auth_failed_and_not_retryable(sap):
    """SAP refuses bad credentials with 401 and its own code: AUTH_FAILED, not retried."""
    url, _ = sap
    with pytest.raises(JobError) as err:
        make(url, password="wrong").test()
    assert err.value.code == "AUTH_FAILED" and not err.value.retryable
    assert "Login failed" in err.value.message and "SAP code" in err.value.message


def test_login_echoing_the_password_never_shows_it(sap, caplog):
    """A proxy or debug build that echoes the login request into its error page: the job's
    message carries neither the password as typed nor as JSON escapes it."""
    url, state = sap
    password = 'pa"ss\\wörd-42'
    state.canned_logins.append(Canned(400, "Bad request: {request}", "text/plain"))
    with caplog.at_level(logging.DEBUG), pytest.raises(JobError) as err:
        make(url, password=password).test()
    assert err.value.code == "AUTH_FAILED"
    assert "Bad request" in err.value.message and "***" in err.value.message
    for form in (password, 'pa\\"ss\\\\w\\u00f6rd-42', 'pa\\"ss\\\\wörd-42'):
        assert form not in err.value.message and form not in caplog.text


def test_a_huge_error_page_is_cut_not_a_query_failure(sap):
    """A 503 whose HTML page is 5 MiB: read in part, SOURCE_UNAVAILABLE (before: the 1 MiB
    cap on error bodies made it QUERY_FAILED, not retried)."""
    url, state = sap
    state.canned_gets.append(Canned(503, "<html>" + "x" * (5 << 20) + "</html>", "text/html"))
    started = time.monotonic()
    with pytest.raises(JobError) as err:
        make(url).query({"entity": "Items"})
    assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable
    assert "HTTP 503" in err.value.message and len(err.value.message) < 400
    assert time.monotonic() - started < 10
    assert state.logouts == 1  # the session is still ended, over a fresh connection


# ------------------------------------------------------------------ queries


@pytest.mark.parametrize("status", [500, 502, 504])
def test_query_answered_5xx_is_source_unavailable(sap, status):
    url, state = sap
    state.canned_gets.append(Canned(status, sap_error(-1, "Internal error")))
    with pytest.raises(JobError) as err:
        make(url).query({"entity": "Items"})
    assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable
    assert f"HTTP {status}" in err.value.message and "Internal error" in err.value.message


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_mid_paging_is_waited_for_and_the_page_repeated(sap, status):
    """A 429/503 with a short Retry-After on page 3 is waited for and page 3 asked again:
    every row arrives once (before, 429 failed the job QUERY_FAILED, 503 failed it too)."""
    url, state = sap
    state.canned_gets.append(
        Canned(status, sap_error(-1, "Busy"), headers=[("Retry-After", "1")], after_pages=2)
    )
    started = time.monotonic()
    rows = read_all(make(url, page_size="20"), {"entity": "Items", "select": "ItemCode"})
    assert [r[0] for r in rows] == ALL_ITEMS
    assert time.monotonic() - started >= 0.9  # it did wait
    assert len(gets(state)) == 5 + 1 and state.logins == 1


def test_retry_after_as_an_http_date_and_bad_values():
    soon = email.utils.format_datetime(
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=20), usegmt=True
    )
    assert 15 < retry_after(soon) <= 20
    assert retry_after("7") == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: at once
    for bad in (None, "", "soon", "-5", "1.5e9"):
        assert retry_after(bad) is None


def test_a_long_retry_after_fails_at_once_retryable_with_the_delay(sap):
    """A Retry-After longer than the agent waits in place: SOURCE_UNAVAILABLE, retryable,
    the delay in the message, no wait."""
    url, state = sap
    state.canned_gets.append(Canned(429, sap_error(-1, "Busy"), headers=[("Retry-After", "3600")]))
    started = time.monotonic()
    with pytest.raises(JobError) as err:
        make(url).query({"entity": "Items"})
    assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable
    assert "retry after 3600 s" in err.value.message
    assert time.monotonic() - started < 5 and len(gets(state)) == 1


def test_retry_after_forever_gives_up_after_a_few_tries(sap):
    url, state = sap
    for _ in range(MAX_BUSY_RETRIES + 2):
        state.canned_gets.append(Canned(503, "", "text/plain", [("Retry-After", "0")]))
    with pytest.raises(JobError) as err:
        make(url).query({"entity": "Items"})
    assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable
    assert len(gets(state)) == MAX_BUSY_RETRIES + 1


def test_cancel_ends_a_retry_after_wait_at_once(sap):
    url, state = sap
    state.canned_gets.append(Canned(503, "", "text/plain", [("Retry-After", "25")]))
    source = make(url)
    thread, out = run_in_thread(lambda: source.query({"entity": "Items"}))
    wait_for(lambda: len(gets(state)) == 1, 10)
    source.cancel()
    join(thread, 3)
    assert isinstance(out.get("error"), JobError) and out["error"].code == "CANCELLED"


def test_a_retry_after_past_the_job_deadline_is_not_waited_for(sap):
    url, state = sap
    state.canned_gets.append(Canned(503, "", "text/plain", [("Retry-After", "20")]))
    stream = make(url).prepare({"entity": "Items"}, timeout=5)
    started = time.monotonic()
    with pytest.raises(JobError) as err:
        stream.start()
    stream.close()
    assert err.value.code == "SOURCE_UNAVAILABLE" and time.monotonic() - started < 4


def test_sessions_that_keep_dying_stop_after_a_few_fresh_logins(sap):
    """A session that dies after every page: one re-login per 401, but not forever: after
    MAX_RELOGINS fresh logins the job fails AUTH_FAILED (before, it logged in once a page,
    as many times as there were pages)."""
    url, state = sap
    state.expire_every_page = True
    with pytest.raises(JobError) as err:
        read_all(make(url, page_size="5"), {"entity": "Items"})
    assert err.value.code == "AUTH_FAILED" and "fresh logins" in err.value.message
    assert state.logins == MAX_RELOGINS + 1


def test_sessions_that_time_out_idle_in_a_long_job_are_renewed_each_time(sap, monkeypatch):
    """The cap is for sessions that die right after their login. A session that dies after
    a long pause (a slow reader, SAP's idle SessionTimeout) is renewed every time: a long
    job is not failed for it (here every expiry counts as such a pause)."""
    url, state = sap
    monkeypatch.setattr(sap_b1_session, "QUICK_EXPIRY", 0.0)
    state.expire_every_page = True
    rows = read_all(make(url, page_size="10"), {"entity": "Items", "select": "ItemCode"})
    assert [r[0] for r in rows] == ALL_ITEMS
    assert state.logins == 10  # one login, then one per expired page after the first


def test_empty_pages_with_next_links_forever_end_the_job(sap):
    """A broken server that sends empty pages, each with a new next link: the job fails
    QUERY_FAILED after MAX_EMPTY_PAGES (before, it paged until the job's deadline)."""
    url, state = sap
    state.empty_pages = True
    stream = make(url, page_size="5").prepare({"entity": "Items"}, timeout=30)
    with pytest.raises(JobError) as err:
        stream.start()
        while stream.fetch(100):
            pass
    stream.close()
    assert err.value.code == "QUERY_FAILED" and "without a row" in err.value.message
    assert len(gets(state)) == MAX_EMPTY_PAGES + 1


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_absolute_next_links_to_the_same_server_are_followed(sap, version):
    url, state = sap
    state.next_link_base = url
    rows = read_all(make(url, version=version, page_size="30"), {"entity": "Items"})
    assert [r[0] for r in rows] == ALL_ITEMS and len(gets(state)) == 4


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_next_link_to_another_host_is_refused_and_nothing_goes_there(sap, version):
    """A next link naming another server: the job fails and that server receives nothing,
    least of all the session cookie."""
    url, state = sap
    other, other_state = start_fake_sap_b1()
    try:
        state.next_link_base = other.url
        with pytest.raises(JobError) as err:
            read_all(make(url, version=version, page_size="30"), {"entity": "Items"})
        assert err.value.code == "QUERY_FAILED" and "another server" in err.value.message
        assert other_state.log == [] and len(gets(state)) == 1
    finally:
        other.stop()


GERMAN = "Ungültiger Feldname „ItemCode“ \u2013 bitte prüfen"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (sap_error(-5002, GERMAN, "de-de"), GERMAN),
        (sap_error(-1, "无效的属性名称", "zh-cn"), "无效的属性名称"),
        ('{"error": {"code": "-1", "message": "プロパティが無効です"}}', "プロパティが無効です"),
    ],
)  # fmt: skip
def test_error_texts_in_other_languages_reach_the_job_intact(sap, body, text):
    url, state = sap
    state.canned_gets.append(Canned(400, body))
    with pytest.raises(JobError) as err:
        make(url).query({"entity": "Items"})
    assert err.value.code == "QUERY_FAILED" and not err.value.retryable
    assert text in err.value.message


@pytest.mark.parametrize(
    ("canned", "expected"),
    [
        (Canned(400, "Bad Request\r\n\tInvalid query\x00", "text/plain"),
         "HTTP 400: Bad Request Invalid query"),
        (Canned(404, "<html><body>Not here</body></html>", "text/html"), "HTTP 404"),
        (Canned(400, "", "text/plain"), "HTTP 400"),
    ],
)  # fmt: skip
def test_non_json_error_bodies_become_one_clear_line(sap, canned, expected):
    url, state = sap
    state.canned_gets.append(canned)
    with pytest.raises(JobError) as err:
        make(url).query({"entity": "Items"})
    assert err.value.code == "QUERY_FAILED" and expected in err.value.message
    assert "\n" not in err.value.message and "\x00" not in err.value.message


@pytest.mark.parametrize(
    ("canned", "said"),
    [
        (Canned(403, sap_error(-1, "You are not permitted to perform this action")),
         "HTTP 403: You are not permitted to perform this action (SAP code -1)"),
        (Canned(403, "<html><body>403 Forbidden</body></html>", "text/html"), "HTTP 403 Forbidden"),
    ],
    ids=["sap-body", "proxy-html"],
)  # fmt: skip
def test_a_403_names_the_user_the_object_and_the_permission_to_grant(sap, canned, said):
    """Signed in, but this user may not read the entity: not AUTH_FAILED (the credentials
    are right, other entities read fine), QUERY_FAILED as a SQL source's "permission
    denied" is, not retried, saying which permission is missing and where to grant it
    (before: "SAP Business One: You are not permitted ...", naming neither)."""
    url, state = sap
    state.canned_gets.append(canned)
    with pytest.raises(JobError) as err:
        make(url).query({"entity": "Orders", "select": ["DocEntry"], "filter": "DocTotal gt 5"})
    assert err.value.code == "QUERY_FAILED" and not err.value.retryable
    msg = err.value.message
    assert f"user {USER!r} is not permitted to read Orders" in msg, msg
    assert said in msg and "Authorizations" in msg, msg
    assert [g["path"] for g in gets(state)] == ["/Orders"]  # asked once: not retried


def test_a_403_to_discover_names_the_metadata(sap):
    url, state = sap
    state.canned_gets.append(Canned(403, sap_error(-1, "You are not permitted to perform this action")))
    with pytest.raises(JobError) as err:
        make(url).discover()
    assert err.value.code == "QUERY_FAILED" and "not permitted to read $metadata" in err.value.message


def test_an_error_echoing_the_session_cookie_never_shows_the_session_id(sap, caplog):
    """A debugging proxy that echoes the Cookie header: the session id is masked."""
    url, state = sap
    state.canned_gets.append(Canned(400, sap_error(-1, "Rejected request with {cookie}")))
    with caplog.at_level(logging.DEBUG), pytest.raises(JobError) as err:
        make(url).query({"entity": "Items"})
    assert "Rejected request" in err.value.message and "B1SESSION=***" in err.value.message
    for session_id in state.sessions_ever:
        assert session_id not in err.value.message and session_id not in caplog.text


def test_a_page_too_large_names_the_fix(sap, monkeypatch):
    url, _ = sap
    monkeypatch.setattr(sap_b1_session, "MAX_JSON_BYTES", 4096)
    with pytest.raises(JobError) as err:
        make(url, page_size="50").query({"entity": "Items"})
    assert err.value.code == "QUERY_FAILED" and "page_size" in err.value.message


@pytest.mark.parametrize("attrs", ["; Partitioned", "; Priority=High; SameSite=None"])
def test_cookies_with_attributes_a_proxy_adds_still_carry_the_session(sap, attrs):
    """Set-Cookie headers with attributes Python's SimpleCookie does not know: B1SESSION and
    ROUTEID are still read and sent back (before, both cookies vanished, ROUTEID with no
    SessionId to fall back on, and every request was refused: AUTH_FAILED)."""
    url, state = sap
    state.cookie_attrs = attrs
    rows = read_all(make(url, page_size="50"), {"entity": "Items"})
    assert len(rows) == 95 and state.logins == 1
    assert all(e["cookies"] for e in gets(state))


def test_a_json_page_with_a_byte_order_mark_is_read(sap):
    url, state = sap
    body = '\ufeff{"value": [{"ItemCode": "A1"}]}'
    state.canned_gets.append(Canned(200, body))
    assert read_all(make(url), {"entity": "Items"}) == [["A1"]]


# ------------------------------------------------------------------ TLS options


def test_an_https_url_for_a_plain_http_port_says_so_and_is_not_retried(sap):
    """https:// against a port that speaks plain HTTP: a configuration error, named as one
    (before: "TLS ... failed: WRONG_VERSION_NUMBER", retryable, retried in vain)."""
    url, _ = sap
    with pytest.raises(JobError) as err:
        make(url.replace("http://", "https://")).test()
    assert err.value.code == "SOURCE_UNAVAILABLE" and not err.value.retryable
    assert "plain HTTP port" in err.value.message


@pytest.mark.parametrize("value", ["flase", "maybe", "2"])
def test_a_verify_value_that_is_neither_true_nor_false_is_refused(sap, value):
    """verify=flase was read as true: the admin who meant to opt out got checks, and one who
    typed verify=ture would equally be guessed at. Now it is a clear configuration error."""
    url, state = sap
    with pytest.raises(JobError) as err:
        make(url, verify=value)
    assert err.value.code == "SOURCE_UNAVAILABLE" and not err.value.retryable
    assert "option verify must be true or false" in err.value.message
    assert state.log == []


@pytest.mark.parametrize("value", ["false", "No", "0", "off", "TRUE", "yes", "1", "on"])
def test_verify_accepts_the_usual_spellings(sap, value):
    url, _ = sap
    make(url, verify=value)


def test_a_certificate_not_signed_by_the_given_ca_file_names_that_file(tls_files, tmp_path):
    other = make_tls(tmp_path)
    server, _ = start_fake_sap_b1(tls_context=tls_files.server_context())
    try:
        with pytest.raises(JobError) as err:
            make(server.url, ca_file=str(other.cert)).test()
        assert err.value.code == "SOURCE_UNAVAILABLE" and not err.value.retryable
        assert f"not signed by the CA in ca_file {other.cert}" in err.value.message
        with pytest.raises(JobError) as err:
            make(server.url, ca_file=str(tmp_path / "missing.pem")).test()
        assert "cannot read its CA file" in err.value.message and not err.value.retryable
    finally:
        server.stop()


def test_plain_http_to_another_machine_is_warned_about_once(caplog):
    """The login carries the password; over http:// to another host it travels in clear.
    Allowed, but logged once per source (never for a loopback address)."""
    source = make("http://sap.invalid:50001", timeout="0.5")
    with caplog.at_level(logging.WARNING, logger="agent.sources"):
        for _ in range(2):
            with pytest.raises(JobError):
                source.test()
    assert caplog.text.count("password travels unencrypted") == 1
    assert "s3cret!" not in caplog.text
    caplog.clear()
    local = make("http://127.0.0.1:9", timeout="0.5")
    with caplog.at_level(logging.WARNING, logger="agent.sources"), pytest.raises(JobError):
        local.test()
    assert "unencrypted" not in caplog.text


@pytest.mark.parametrize("when", ["login", "query"])
def test_a_redirect_is_not_followed_and_names_the_fix(sap, when):
    """A proxy that redirects (http:// to https://, or elsewhere): not followed, so neither
    the password nor the cookie goes anywhere else; a configuration error saying so (before,
    a redirected login was AUTH_FAILED "refused the login: HTTP 301 Moved Permanently")."""
    url, state = sap
    other, other_state = start_fake_sap_b1()
    try:
        target = f"{other.url}/b1s/v2/{'Login' if when == 'login' else 'Items'}"
        canned = Canned(301, "", "text/html", [("Location", target)])
        (state.canned_logins if when == "login" else state.canned_gets).append(canned)
        with pytest.raises(JobError) as err:
            make(url).query({"entity": "Items"})
        assert err.value.code == "SOURCE_UNAVAILABLE" and not err.value.retryable
        assert "redirect to " + target in err.value.message and "not followed" in err.value.message
        assert other_state.log == []
    finally:
        other.stop()


def test_an_http_url_for_a_tls_port_hints_at_https(tls_files):
    server, _ = start_fake_sap_b1(tls_context=tls_files.server_context())
    try:
        with pytest.raises(JobError) as err:
            make(server.url.replace("https://", "http://"), timeout="5").test()
        assert err.value.code == "SOURCE_UNAVAILABLE" and err.value.retryable
        assert "should start with https://" in err.value.message
    finally:
        server.stop()
