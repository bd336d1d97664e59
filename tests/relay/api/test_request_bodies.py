"""Hostile request bodies and HTTP framing: every one gets the envelope with a documented
code (docs/API.md, Request bodies), never a 500, and changes nothing.

Most run against the app in process; those about connections (413 without reading the
body, Expect: 100-continue, header limits, content codings the parser refuses) run over
a raw socket against the runner ``mini-relay serve`` uses, and once against a real
``mini-relay serve`` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.api.common import MAX_DEPTH
from relay.web.auth import make_token
from tests.relay.conftest import SECRET, TIMEOUT, Api, FakeAgent

JSON = {"Content-Type": "application/json"}
NEW = b'{"name": "n", "os": "linux"}'


async def _post(api: Api, path: str, body: bytes, **headers: str) -> tuple[int, Any, Any]:
    resp = await api.client.post("/api/v1" + path, data=body, headers={**api.headers(), **headers})
    out = await resp.json()
    assert out["success"] is (resp.status < 400), out
    text = json.dumps(out)
    assert "Traceback" not in text and "/relay/" not in text and ".py" not in text
    return resp.status, out, resp


async def _count(api: Api) -> int:
    _, out, _ = await api.call("GET", "/connectors", expect=200)
    return int(out["meta"]["total"])


@pytest.mark.parametrize("ctype", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/octet-stream", "application/jsonx", "text/json", "application/xml", ";;;==",
])  # fmt: skip
async def test_a_body_that_is_not_json_by_its_content_type_is_415(api: Api, ctype: str) -> None:
    status, out, resp = await _post(api, "/connectors", NEW, **{"Content-Type": ctype})
    assert status == 415 and out["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE", out
    assert "application/json" in out["error"]["message"]
    assert resp.headers["Connection"] == "close"  # the body was not read
    assert await _count(api) == 0


async def test_415_on_every_route_that_reads_a_body(api: Api) -> None:
    con = await api.new_connector()
    for method, path in (("PATCH", f"/connectors/{con['id']}"), ("POST", f"/connectors/{con['id']}/rotate-key"),
                         ("POST", "/jobs")):  # fmt: skip
        resp = await api.client.request(method, "/api/v1" + path, data=b'{"name": "x"}',
                                        headers={**api.headers(), "Content-Type": "text/plain"})
        assert resp.status == 415, (path, await resp.text())
    assert (await api.connector(con["id"]))["name"] == "office"  # nothing changed


@pytest.mark.parametrize("ctype", [
    "application/json", "Application/JSON", "application/json; charset=utf-8", "application/json;charset=UTF-8",
    'application/json; charset="utf-8"', "application/vnd.api+json", "application/merge-patch+json",
])  # fmt: skip
async def test_json_content_types_are_read(api: Api, ctype: str) -> None:
    status, out, _ = await _post(api, "/connectors", NEW, **{"Content-Type": ctype})
    assert status == 201, out


async def test_a_charset_other_than_utf8_is_415(api: Api) -> None:
    for charset in ("utf-16", "latin-1", "iso-8859-1"):
        status, out, _ = await _post(api, "/connectors", NEW, **{"Content-Type": f"application/json; charset={charset}"})
        assert status == 415 and "UTF-8" in out["error"]["message"], out
    assert await _count(api) == 0


async def test_a_missing_content_type_is_read_as_json(api: Api, client: Any) -> None:
    """Many clients leave it out (requests with data=, fetch with a string body, curl
    --data-binary without -H): the body is read as JSON."""
    resp = await client.post("/api/v1/connectors", data=NEW, headers=api.headers(),
                             skip_auto_headers={"Content-Type"})  # aiohttp would say octet-stream
    assert "Content-Type" not in resp.request_info.headers
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("coding", ["zstd-nope", "gzip, gzip", "compress", "x-gzip"])  # br: below
async def test_a_content_encoding_the_relay_does_not_decode_is_415(api: Api, coding: str) -> None:
    status, out, _ = await _post(api, "/connectors", NEW, **JSON, **{"Content-Encoding": coding})
    assert status == 415 and out["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE", out
    assert await _count(api) == 0


async def test_a_utf8_byte_order_mark_is_skipped(api: Api) -> None:
    status, out, _ = await _post(api, "/connectors", b"\xef\xbb\xbf" + NEW, **JSON)
    assert status == 201 and out["data"]["name"] == "n", out


@pytest.mark.parametrize(("body", "words"), [
    (NEW.decode().encode("utf-16"), "not UTF-8"),
    (NEW.decode().encode("utf-16-be"), "not UTF-8"),
    (NEW.decode().encode("utf-32-le"), "not UTF-8"),
    (b'{"name": "n\xff\xfe", "os": "linux"}', "not valid UTF-8"),
    (b'{"name": "\xed\xa0\x80", "os": "linux"}', "not valid UTF-8"),  # an encoded surrogate
    (b'{"name": "n", "os": "linux",}', "trailing comma"),
    (b"   ", "not valid JSON"),
    (b'{"name": NaN, "os": "linux"}', "not valid JSON"),
    (b"[" * 100_000, f"deeper than {MAX_DEPTH}"),
    (b'{"a":' * 100_000, f"deeper than {MAX_DEPTH}"),
    (b"[]", "JSON object"),
    (b"null", "JSON object"),
])  # fmt: skip
async def test_bodies_that_are_not_utf8_json_objects_are_400(api: Api, body: bytes, words: str) -> None:
    status, out, _ = await _post(api, "/connectors", body, **JSON)
    assert status == 400 and out["error"]["code"] == "BAD_REQUEST", out
    assert words in out["error"]["message"], out
    assert await _count(api) == 0


@pytest.mark.parametrize("body", [
    b'{"name": "a", "name": "b", "os": "linux"}',
    b'{"name": "a", "os": "linux", "\\u006eame": "b"}',  # the same name, escaped
    b'{"name": "x:y", "os": "linux", "os": "windows"}',
])  # fmt: skip
async def test_a_name_twice_in_one_object_is_400(api: Api, body: bytes) -> None:
    """Parsers disagree on which one counts (orjson and Python keep the last, others the
    first): the relay does not guess."""
    status, out, _ = await _post(api, "/connectors", body, **JSON)
    assert status == 400 and "twice" in out["error"]["message"], out
    assert out["error"]["details"]["field"] in ("name", "os")
    assert await _count(api) == 0


async def test_duplicates_inside_nested_objects_are_400_and_repeats_across_objects_are_not(
    api: Api, agent: FakeAgent
) -> None:
    job = {"connectorId": agent.connector_id, "source": "erp",
           "query": {"sql": "SELECT :a", "params": {"a": [{"k": 1}, {"k": 2}]}}}  # fmt: skip
    status, out, _ = await _post(api, "/jobs", json.dumps(job).encode(), **JSON)
    assert status == 202, out
    raw = json.dumps(job).replace('"params": {"a"', '"params": {"a": 0, "a"').encode()
    status, out, _ = await _post(api, "/jobs", raw, **JSON)
    assert status == 400 and out["error"]["details"]["field"] == "a", out


async def test_a_large_body_is_checked_off_the_event_loop_with_the_same_answers(
    api: Api, agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body past INLINE_BODY_BYTES is parsed and checked in a thread (a 1 MiB body of
    small objects costs ~0.1 s, which the loop must not spend): the same 202 and 400s."""
    from relay.api import common

    threads: list[str] = []
    real = common._parsed
    monkeypatch.setattr(common, "_parsed", lambda raw: threads.append(threading.current_thread().name) or real(raw))
    params = {f"p{i}": [{"k": i, "v": "x:y"}] for i in range(3000)}
    job = {"connectorId": agent.connector_id, "source": "erp", "query": {"sql": "SELECT 1", "params": params}}
    raw = json.dumps(job).encode()
    assert len(raw) > common.INLINE_BODY_BYTES
    status, out, _ = await _post(api, "/jobs", raw, **JSON)
    assert status == 202, out
    status, out, _ = await _post(api, "/jobs", raw.replace(b'"k": 2999', b'"k": 1, "k": 2999'), **JSON)
    assert status == 400 and out["error"]["details"]["field"] == "k", out
    status, out, _ = await _post(api, "/jobs", raw[:-1], **JSON)
    assert status == 400 and "not valid JSON" in out["error"]["message"], out
    assert len(threads) == 3 and threading.main_thread().name not in threads
    status, out, _ = await _post(api, "/connectors", NEW, **JSON)  # a small one: on the loop
    assert status == 201 and threads[-1] == threading.main_thread().name


async def test_nesting_past_the_limit_is_400_not_500(api: Api, agent: FakeAgent) -> None:
    """A job's params nested past ~250 levels could not be sealed (orjson writes at most
    that deep): a 500, once. And past ~1000 with a big integer inside, Python's json (the
    exact-integer reader) ran out of recursion: a 500 too."""
    def job(depth: int, leaf: str = "1") -> bytes:
        return (f'{{"connectorId": "{agent.connector_id}", "source": "erp", "query": {{"sql": "SELECT :a", '
                f'"params": {{"a": {"[" * depth}{leaf}{"]" * depth}}}}}}}').encode()  # fmt: skip

    for depth, leaf in ((300, "1"), (1010, "1"), (1010, "123456789012345678901234567890"), (600, "9" * 25)):
        status, out, _ = await _post(api, "/jobs", job(depth, leaf), **JSON)
        assert status == 400 and f"deeper than {MAX_DEPTH}" in out["error"]["message"], (depth, out)
    status, out, _ = await _post(api, "/jobs", job(MAX_DEPTH - 3), **JSON)  # body, query, params, a
    assert status == 202, out
    status, out, _ = await _post(api, "/jobs", job(MAX_DEPTH - 2), **JSON)
    assert status == 400, out


@pytest.mark.parametrize(("field", "raw"), [
    ("options.timeoutSeconds", "1e400"), ("options.timeoutSeconds", "-1e400"),
    ("options.priority", "9" * 400), ("options.timeoutSeconds", "9" * 5000),
])  # fmt: skip
async def test_numbers_past_a_double_are_400(api: Api, agent: FakeAgent, field: str, raw: str) -> None:
    name = field.split(".")[1]
    body = (f'{{"connectorId": "{agent.connector_id}", "source": "erp", "query": {{"sql": "SELECT 1"}}, '
            f'"options": {{"{name}": {raw}}}}}').encode()  # fmt: skip
    status, out, _ = await _post(api, "/jobs", body, **JSON)
    assert status == 400 and "infinity" in out["error"]["message"], out


@pytest.mark.parametrize("value", [10**30, -(10**30), 2**63, 1e300, 1.5])
async def test_huge_numbers_in_numeric_fields_are_422_naming_them(api: Api, agent: FakeAgent, value: Any) -> None:
    for name in ("timeoutSeconds", "priority", "retryLimit", "maxRows", "ttlSeconds"):
        body = {"connectorId": agent.connector_id, "source": "erp", "query": {"sql": "SELECT 1"},
                "options": {name: value}}  # fmt: skip
        status, out, _ = await _post(api, "/jobs", json.dumps(body).encode(), **JSON)
        assert status == 422 and out["error"]["details"]["field"] == f"options.{name}", (name, out)
    if abs(value) > 30 * 86400:  # gracePeriodSeconds takes fractions
        con = await api.new_connector()
        status, out, _ = await _post(api, f"/connectors/{con['id']}/rotate-key",
                                     json.dumps({"gracePeriodSeconds": value}).encode(), **JSON)  # fmt: skip
        assert status == 422 and out["error"]["details"]["field"] == "gracePeriodSeconds", out


async def test_an_empty_body_where_one_is_needed_is_400(api: Api) -> None:
    con = await api.new_connector()
    for method, path in (("POST", "/connectors"), ("PATCH", f"/connectors/{con['id']}"), ("POST", "/jobs")):
        for body in (b"", b"\xef\xbb\xbf"):
            resp = await api.client.request(method, "/api/v1" + path, data=body, headers={**api.headers(), **JSON})
            out = await resp.json()
            assert resp.status == 400 and out["error"]["message"] == "a JSON body is required", (path, out)
    # rotate-key's body is optional: none at all is the default grace period
    _, out, _ = await api.call("POST", f"/connectors/{con['id']}/rotate-key", expect=200)


async def test_a_chunked_body_is_read_and_one_past_the_limit_is_413(api: Api) -> None:
    async def chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    resp = await api.client.post("/api/v1/connectors", data=chunks(NEW), headers={**api.headers(), **JSON})
    assert resp.status == 201 and resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    big = b'{"name": "' + b"x" * (2 << 20) + b'", "os": "linux"}'
    resp = await api.client.post("/api/v1/connectors", data=chunks(big, 65536), headers={**api.headers(), **JSON})
    out = await resp.json()
    assert resp.status == 413 and out["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert resp.headers["Connection"] == "close"
    resp = await api.client.post("/api/v1/connectors", data=chunks(b""), headers={**api.headers(), **JSON})
    assert resp.status == 400


async def test_head_options_and_accept(api: Api, client: Any) -> None:
    """HEAD answers as GET would, without a body; OPTIONS is 405 with Allow, in the
    envelope; Accept is not consulted (JSON whatever it says)."""
    resp = await client.head("/api/v1/jobs", headers=api.headers())
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json" and await resp.read() == b""
    resp = await client.head("/api/v1/jobs/job_x", headers=api.headers())
    assert resp.status == 404 and await resp.read() == b""
    resp = await client.options("/api/v1/jobs", headers=api.headers())
    assert resp.status == 405 and set(resp.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
    assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"
    for accept in ("text/html", "application/xml;q=1, */*;q=0", "image/png"):
        resp = await client.get("/api/v1/jobs", headers=api.headers(Accept=accept))
        assert resp.status == 200 and (await resp.json())["success"] is True


async def test_long_and_nul_ids_and_query_values_are_not_found_or_empty(api: Api) -> None:
    long = "a" * 7000  # a request line under 8190 bytes; past it: 431 (test_http_parser_errors)
    for path in (f"/jobs/{long}", f"/jobs/{long}/results", f"/connectors/{long}", f"/jobs/{long}%00"):
        status, out, _ = await api.call("GET", path)
        assert status == 404 and len(json.dumps(out)) < 1000, (path[:20], status)
    for query in (f"connectorId={long}", "connectorId=a%00b"):
        _, out, _ = await api.call("GET", f"/jobs?{query}", expect=200)
        assert out["data"] == []
    status, out, _ = await api.call("GET", "/jobs?status=queued%00")
    assert status == 422 and out["error"]["details"]["field"] == "status"


# --- over a raw socket, on the runner `mini-relay serve` uses


def _head(method: str, path: str, token: str, tenant: str = "t1", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {token}", f"X-Tenant-ID: {tenant}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _exchange(port: int, head: bytes, body: bytes = b"", *, body_after: float = 0.0) -> tuple[bytes, float]:
    """Send ``head``, then ``body`` (after ``body_after`` s unless an answer came first);
    the whole answer up to the relay's close, and how long the relay took to close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(head)
        await writer.drain()
        if body:
            try:
                first = await asyncio.wait_for(reader.read(65536), body_after)
            except TimeoutError:
                first = b""
            if first and first != CONTINUE:  # answered before the body was sent: read to the close
                rest = await asyncio.wait_for(reader.read(), TIMEOUT)
                return first + rest, time.monotonic() - started
            writer.write(body)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        return first + answer if body else answer, time.monotonic() - started
    finally:
        writer.close()


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, json.loads(body)


async def test_a_declared_body_over_the_limit_is_413_at_once_and_never_read(relay_port: int) -> None:
    """413 as soon as the headers arrive, and the connection closes with it: the relay does
    not read (aiohttp would read and drop the rest for up to 10 s first)."""
    token = make_token(SECRET, "t1", "admin", 600)
    head = _head("POST", "/api/v1/jobs", token, Content_Type="application/json", Content_Length=str(50 << 20))
    answer, took = await _exchange(relay_port, head)
    status, headers, out = _parse(answer)
    assert status == 413 and out["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert headers["connection"] == "close" and took < 5, took


async def test_expect_100_continue_is_refused_before_the_body_when_it_is_too_large(relay_port: int) -> None:
    token = make_token(SECRET, "t1", "admin", 600)
    head = _head("POST", "/api/v1/connectors", token, Content_Type="application/json",
                 Content_Length=str(50 << 20), Expect="100-continue")  # fmt: skip
    answer, _ = await _exchange(relay_port, head)
    assert not answer.startswith(b"HTTP/1.1 100"), answer[:100]
    assert _parse(answer)[0] == 413
    # within the limit: 100 Continue, then the answer to the body
    head = _head("POST", "/api/v1/connectors", token, Content_Type="application/json",
                 Content_Length=str(len(NEW)), Expect="100-continue", Connection="close")  # fmt: skip
    answer, _ = await _exchange(relay_port, head, NEW, body_after=TIMEOUT)
    assert answer.startswith(CONTINUE), answer[:100]
    assert _parse(answer.removeprefix(CONTINUE))[0] == 201


async def test_an_unknown_expectation_is_ignored_not_a_plain_text_417(relay_port: int) -> None:
    token = make_token(SECRET, "t1", "admin", 600)
    answer, _ = await _exchange(relay_port, _head("GET", "/api/v1/jobs", token, Expect="<b>x</b>", Connection="close"))
    status, headers, out = _parse(answer)
    assert status == 200 and out["success"] is True and headers["content-type"] == "application/json"


async def test_too_many_headers_is_431_and_a_coding_without_a_decoder_is_415(relay_port: int) -> None:
    token = make_token(SECRET, "t1", "admin", 600)
    many = {f"X_H{i}": "v" for i in range(200)}
    status, _, out = _parse((await _exchange(relay_port, _head("GET", "/api/v1/jobs", token, **many)))[0])
    assert status == 431 and out["error"]["code"] == "REQUEST_TOO_LARGE", out
    head = _head("POST", "/api/v1/connectors", token, Content_Type="application/json", Content_Encoding="br",
                 Content_Length=str(len(NEW)))  # fmt: skip
    status, _, out = _parse((await _exchange(relay_port, head + NEW))[0])
    assert status == 415 and out["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE", out


def _envelope(answer: bytes, status: int, code: str) -> dict[str, str]:
    """``answer`` is ``status`` with ``code`` in the envelope, quoting nothing of the
    request; its headers."""
    got, headers, out = _parse(answer)
    assert got == status and headers["content-type"] == "application/json", answer[:300]
    assert out["success"] is False and out["error"]["code"] == code, out
    assert out["error"]["requestId"] == headers["x-request-id"]
    assert b"banana" not in answer and b"pppp" not in answer
    return headers


async def test_an_unknown_expectation_on_a_path_no_route_serves_is_417_in_the_envelope(relay_port: int) -> None:
    """aiohttp's own Expect handler answers there: a plain-text 417 quoting the header."""
    token = make_token(SECRET, "t1", "admin", 600)
    for path in ("/api/v1/nope", "/nope", "/api/v1/jobs/job_x/nope"):
        answer, took = await _exchange(relay_port, _head("GET", path, token, Expect="100-banana"))
        headers = _envelope(answer, 417, "EXPECTATION_FAILED")
        assert headers["connection"] == "close" and took < TIMEOUT / 2, path
    # 100-continue there is met, and the answer is the route's: 404 in the envelope
    answer, _ = await _exchange(relay_port, _head("GET", "/api/v1/nope", token, Expect="100-continue",
                                                  Connection="close"))  # fmt: skip
    assert answer.startswith(CONTINUE), answer[:100]
    _envelope(answer.removeprefix(CONTINUE), 404, "NOT_FOUND")


async def test_an_unknown_expectation_with_a_method_the_route_does_not_take_is_417(relay_port: int) -> None:
    token = make_token(SECRET, "t1", "admin", 600)
    head = _head("PUT", "/api/v1/connectors", token, Content_Type="application/json",
                 Content_Length=str(len(NEW)), Expect="100-banana")  # fmt: skip
    answer, _ = await _exchange(relay_port, head, NEW, body_after=TIMEOUT)  # answered before the body
    headers = _envelope(answer, 417, "EXPECTATION_FAILED")
    assert headers["connection"] == "close"
    # the route's own method: 100 Continue, then the answer to the body
    head = _head("POST", "/api/v1/connectors", token, Content_Type="application/json",
                 Content_Length=str(len(NEW)), Expect="100-continue", Connection="close")  # fmt: skip
    answer, _ = await _exchange(relay_port, head, NEW, body_after=TIMEOUT)
    assert answer.startswith(CONTINUE), answer[:100]
    status, _, out = _parse(answer.removeprefix(CONTINUE))
    assert status == 201 and out["data"]["name"] == "n", out


def _head_of(size: int, method: str, path: str, token: str, **headers: str) -> bytes:
    """A request head of exactly ``size`` bytes: ``_head``'s, padded with X-Pad headers."""
    base = _head(method, path, token, **headers)
    pads, left = [], size - len(base)
    while left > 0:
        line = f"X-Pad-{len(pads):02d}: "
        fill = min(8000, left - len(line) - 2)
        assert fill >= 1, "cannot pad by so few bytes"
        pads.append(f"{line}{'p' * fill}\r\n".encode())
        left -= len(pads[-1])
    head = base[:-2] + b"".join(pads) + b"\r\n"
    assert len(head) == size
    return head


async def _sent_while_read(port: int, data: bytes) -> bytes:
    """Send ``data``, then read the answer to the close: the relay may answer, and close,
    before it has read all of ``data`` (the send fails, the answer is there to read)."""

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            with contextlib.suppress(ConnectionError):
                sock.sendall(data)
            answer = b""
            with contextlib.suppress(ConnectionError):
                while chunk := sock.recv(65536):
                    answer += chunk
            return answer

    return await asyncio.to_thread(exchange)


async def test_headers_over_64_kib_in_all_are_431_and_the_relay_serves_on(relay_port: int) -> None:
    """aiohttp bounds each line (8190 bytes) and their number (128), not their sum: 100
    headers of 8 KB (800 KB) were accepted."""
    token = make_token(SECRET, "t1", "admin", 600)
    many = {f"X_Big{i}": "p" * 8000 for i in range(100)}
    answer = await _sent_while_read(relay_port, _head("GET", "/api/v1/jobs", token, **many))
    _envelope(answer, 431, "REQUEST_TOO_LARGE")  # and the relay closed the connection: read to its end
    assert "65536 bytes" in _parse(answer)[2]["error"]["message"]
    answer, _ = await _exchange(relay_port, _head("GET", "/api/v1/jobs", token, Connection="close"))
    assert _parse(answer)[0] == 200


async def test_a_head_of_64_kib_is_read_and_one_byte_more_is_431(relay_port: int) -> None:
    """Counted as sent, request line and blank line included; a body does not count."""
    token = make_token(SECRET, "t1", "admin", 600)
    answer, _ = await _exchange(relay_port, _head_of(65536, "GET", "/api/v1/jobs", token, Connection="close"))
    assert _parse(answer)[0] == 200, answer[:300]
    answer = await _sent_while_read(relay_port, _head_of(65537, "GET", "/api/v1/jobs", token))
    _envelope(answer, 431, "REQUEST_TOO_LARGE")
    body = NEW[:-1] + b" " * (200 << 10) + b"}"  # 200 KiB of white space inside the object
    head = _head_of(65536, "POST", "/api/v1/connectors", token, Content_Type="application/json",
                    Content_Length=str(len(body)), Connection="close")  # fmt: skip
    answer, _ = await _exchange(relay_port, head + body)
    assert _parse(answer)[0] == 201, answer[:300]


async def test_a_pipelined_head_over_the_limit_is_431_after_the_request_before_it(relay_port: int) -> None:
    """A head that begins in the read where the previous request ends is measured once
    parsed: the first request is answered, the second refused."""
    token = make_token(SECRET, "t1", "admin", 600)
    first = _head("GET", "/api/v1/jobs", token)
    answer = await _sent_while_read(relay_port, first + _head_of(70000, "GET", "/api/v1/jobs", token))
    head, _, after = answer.partition(b"\r\n\r\n")
    length = int(_parse(head + b"\r\n\r\nnull")[1]["content-length"])
    assert _parse(answer[: len(head) + 4 + length])[0] == 200, answer[:300]
    _envelope(after[length:], 431, "REQUEST_TOO_LARGE")


def test_the_head_limit_refuses_before_the_parser_holds_more_than_it() -> None:
    """The parser is handed at most MAX_HEAD_BYTES of a head, then nothing more."""
    from relay.web.httpserver import MAX_HEAD_BYTES, HeadTooLarge, _HeadLimit

    class Parser:
        fed = 0

        def feed_data(self, data: bytes) -> tuple[list[Any], bool, bytes]:
            self.fed += len(data)
            return [], False, b""

    parser = Parser()
    limit = _HeadLimit(parser)
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"h" * 8000) for i in range(100)) + b"\r\n"
    with pytest.raises(HeadTooLarge):
        for at in range(0, len(head), 4096):
            limit.feed_data(head[at : at + 4096])
    assert 0 < parser.fed <= MAX_HEAD_BYTES
    assert limit.feed_data(b"more") == ([], False, b"") and parser.fed <= MAX_HEAD_BYTES
    # a head of exactly the limit whose blank line spans two reads, a body after it
    head = b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * (MAX_HEAD_BYTES - 27) + b"\r\n\r\n"
    assert len(head) == MAX_HEAD_BYTES
    limit = _HeadLimit(Parser())
    limit.feed_data(head[:-1])
    limit.feed_data(head[-1:] + b"b" * 10000)  # not refused: the body is not head


async def test_a_client_that_hangs_up_mid_body_is_not_an_internal_error(
    relay_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """It was logged as an unhandled error, with a stack, as if the relay had failed."""
    token = make_token(SECRET, "t1", "admin", 600)
    head = _head("POST", "/api/v1/connectors", token, Content_Type="application/json", Content_Length="100")
    _, writer = await asyncio.open_connection("127.0.0.1", relay_port)
    writer.write(head + b'{"name": ')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.3)
    assert "unhandled error" not in caplog.text and "Traceback" not in caplog.text


@pytest.mark.system
def test_a_real_relay_process_refuses_bad_bodies_in_the_envelope(tmp_path: Path) -> None:
    """``mini-relay serve`` itself: 415, 400 for a duplicate name, and 413 without reading."""
    import urllib.error
    import urllib.request

    from tests.harness import Stack

    stack = Stack(tmp_path)
    try:
        relay = stack.start_relay()
        token = relay.token("acme", "admin")

        def post(body: bytes, ctype: str) -> tuple[int, Any]:
            req = urllib.request.Request(relay.url + "/api/v1/connectors", data=body, method="POST", headers={
                "Authorization": f"Bearer {token}", "X-Tenant-ID": "acme", "Content-Type": ctype})  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        assert post(NEW, "text/plain")[1]["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
        status, out = post(b'{"name": "a", "name": "b", "os": "linux"}', "application/json")
        assert status == 400 and "twice" in out["error"]["message"]
        assert post(NEW, "application/json; charset=utf-8")[0] == 201

        head = _head("POST", "/api/v1/jobs", token, "acme", Content_Type="application/json",
                     Content_Length=str(50 << 20))  # fmt: skip
        answer, took = asyncio.run(_exchange(relay.port, head))
        assert _parse(answer)[0] == 413 and took < 5
    finally:
        stack.close()
