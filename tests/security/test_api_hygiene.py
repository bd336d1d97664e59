"""API hygiene (issue 13), through the real relay app in process: strict ASCII integers
in query strings, unknown body fields refused, connector names without control or
bidirectional characters (docs/SECURITY.md, "API hygiene")."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.relay.conftest import Api

# Digits ``str.isdigit`` or ``int()`` take that are not ASCII 0-9, and other near-integers.
NOT_ASCII_INTEGERS = [
    "\u00b2",  # superscript two: isdigit() True, int() refuses (was a 500)
    "\u0661\u0662\u0663",  # Arabic-Indic 123: int() takes it
    "\uff11\uff12",  # fullwidth 12: int() takes it
    "1_000",  # int() takes it
    " 7",
    "7\n",
    "+7",
    "0x10",
    "1e3",
    "9" * 5000,  # past int()'s digit limit (ValueError) and any range
]


async def _get(api: Api, path: str) -> tuple[int, Any]:
    status, body, _ = await api.call("GET", path)
    return status, body


@pytest.mark.parametrize("value", NOT_ASCII_INTEGERS)
async def test_log_cursor_takes_ascii_digits_only(api: Api, value: str) -> None:
    con = await api.new_connector()
    status, body = await _get(api, f"/connectors/{con['id']}/logs?cursor={quote(value)}")
    assert status == 422, body
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert body["error"]["details"]["field"] == "cursor"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/connectors?page={}", "page"),
        ("/connectors?limit={}", "limit"),
        ("/jobs?page={}", "page"),
        ("/jobs?limit={}", "limit"),
        ("/connectors/{cid}/logs?limit={}", "limit"),
    ],
)
@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662\u0663", "\uff11\uff12", "-1", "9" * 30])
async def test_every_integer_query_parameter_is_strict(api: Api, path: str, field: str, value: str) -> None:
    """Each paging parameter refuses non-ASCII digits, negatives and huge numbers with 422
    naming the field; plain ASCII still works."""
    con = await api.new_connector()
    status, body = await _get(api, path.replace("{cid}", con["id"]).format(quote(value)))
    assert status == 422, body
    assert body["error"]["details"]["field"] == field
    status, body = await _get(api, path.replace("{cid}", con["id"]).format("2"))
    assert status == 200, body


async def test_results_offset_is_strict(api: Api, agent: Any) -> None:
    job_id = await api.submit(agent.connector_id)
    for value in ("\u00b2", "\u0661", "-1", "9" * 25):
        status, body = await _get(api, f"/jobs/{job_id}/results?offset={quote(value)}")
        assert status == 422, (value, body)
        assert body["error"]["details"]["field"] == "offset"


async def test_log_cursor_still_pages(api: Api) -> None:
    con = await api.new_connector()
    status, body = await _get(api, f"/connectors/{con['id']}/logs?cursor=0")
    assert status == 200 and body["data"]["logs"] == []
    status, body = await _get(api, f"/connectors/{con['id']}/logs?cursor=123456789012345678")
    assert status == 200, body


@pytest.mark.parametrize("value", ["\u0661\u0662\u0663", "\uff18\uff10", "8_080", "--5", "\u00b2"])
def test_operator_integers_are_ascii_too(value: str) -> None:
    """MC_RELAY_* integers and mini-relay's --port/--ttl refuse what int() alone would take."""
    from relay.cli import _parser
    from relay.config import ConfigError, RelayConfig

    with pytest.raises(ConfigError, match="MC_RELAY_PORT"):
        RelayConfig.from_env({"MC_RELAY_PORT": value})
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--port", value])
    assert RelayConfig.from_env({"MC_RELAY_PORT": "8081"}).port == 8081


def _numeric_settings() -> list[str]:
    from relay.config import _ENV

    return [var for _, var, conv in _ENV if conv in (int, float) or getattr(conv, "__name__", "") == "conv"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-1", "99999999999999999"])
def test_every_numeric_setting_refuses_what_cannot_work(value: str) -> None:
    """Every MC_RELAY_* number is range-checked: nan passed each 'must be positive' check
    (a heartbeat interval of nan: no session ever timed out), 0 chunk threads or a port
    past 65535 started and failed later. The message names the variable and the range."""
    from relay.config import ConfigError, RelayConfig

    numeric = _numeric_settings()
    assert "MC_RELAY_HEARTBEAT_INTERVAL" in numeric and "MC_RELAY_CHUNK_THREADS" in numeric
    for var in numeric:
        with pytest.raises(ConfigError, match=var):
            RelayConfig.from_env({var: value}, jwt_secret="s" * 40).check()


def test_numeric_settings_name_their_range_and_take_sane_values() -> None:
    from relay.config import ConfigError, RelayConfig

    with pytest.raises(ConfigError, match="MC_RELAY_CHUNK_THREADS has an invalid value '0': it must be a number from 1 to 256"):
        RelayConfig.from_env({"MC_RELAY_CHUNK_THREADS": "0"})
    cfg = RelayConfig.from_env({"MC_RELAY_HEARTBEAT_INTERVAL": "0.5", "MC_RELAY_RESULT_TTL": "60",
                                "MC_RELAY_CHUNK_THREADS": "4", "MC_RELAY_PORT": "0"})  # fmt: skip
    assert (cfg.heartbeat_interval, cfg.result_ttl_seconds, cfg.chunk_threads, cfg.port) == (0.5, 60, 4, 0)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "--port", "70000", "--dev"], "the port must be 0 to 65535"),
        (["token", "--tenant", "t", "--role", "admin", "--ttl", "99999999999999999", "--dev"], "--ttl must be 1 to"),
        (["token", "--tenant", "", "--role", "admin", "--dev"], "--tenant must be 1 to 200 printable"),
        (["token", "--tenant", "a\nb", "--role", "admin", "--dev"], "--tenant must be 1 to 200 printable"),
    ],
)
def test_mini_relay_refuses_what_the_relay_could_not_use(argv: list[str], says: str) -> None:
    """Was: --port 70000 a traceback (OverflowError from bind), a token for tenant '' or for
    3 billion years printed (the relay refuses the first)."""
    import subprocess

    from tests.harness import command

    r = subprocess.run([*command("mini-relay"), *argv], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r


# --------------------------------------------------------------- unknown body fields


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/connectors", {"name": "a", "os": "linux", "tenantId": "t2"}, "tenantId"),
        ("POST", "/connectors", {"name": "a", "os": "linux", "apiKey": "vmc_x"}, "apiKey"),
        ("PATCH", "/connectors/{cid}", {"name": "b", "status": "online"}, "status"),
        ("POST", "/connectors/{cid}/rotate-key", {"gracePeriodSecs": 0}, "gracePeriodSecs"),
        ("POST", "/jobs", {"connectorId": "{cid}", "source": "erp", "operation": "query",
                           "query": {"sql": "SELECT 1"}, "priority": 5}, "priority"),
    ],
)
async def test_every_json_body_refuses_unknown_fields(
    api: Api, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    """POST /connectors, PATCH, rotate-key and POST /jobs alike: 422 naming the field,
    and nothing is created or changed."""
    con = await api.new_connector("before")
    body = {k: (v.replace("{cid}", con["id"]) if isinstance(v, str) else v) for k, v in body.items()}
    status, out, _ = await api.call(method, path.replace("{cid}", con["id"]), json=body)
    assert status == 422, out
    assert out["error"]["code"] == "VALIDATION_ERROR" and out["error"]["details"]["field"] == field
    _, listing, _ = await api.call("GET", "/connectors", expect=200)
    assert [c["name"] for c in listing["data"]] == ["before"]
    assert listing["data"][0]["apiKeyPrefix"] == con["apiKeyPrefix"]  # rotate-key did not run


# --------------------------------------------------------------- connector names

BAD_NAME_CHARACTERS = [
    "\x00", "\x07", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9b",  # C0, DEL, C1
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings and overrides
    "\u2066", "\u2067", "\u2068", "\u2069",  # isolates
    "\u200e", "\u200f", "\u061c",  # marks
    "\u2028", "\u2029",  # line and paragraph separators
]


@pytest.mark.parametrize("ch", BAD_NAME_CHARACTERS, ids=lambda c: f"U+{ord(c):04X}")
async def test_connector_names_refuse_control_and_bidi_characters(api: Api, ch: str) -> None:
    status, out, _ = await api.call("POST", "/connectors", json={"name": f"office{ch}gpj.exe", "os": "linux"})
    assert status == 422, out
    assert out["error"]["details"]["field"] == "name" and f"U+{ord(ch):04X}" in out["error"]["message"]
    con = await api.new_connector("office")
    status, out, _ = await api.call("PATCH", f"/connectors/{con['id']}", json={"name": f"x{ch}y"})
    assert status == 422, out
    assert out["error"]["details"]["field"] == "name"
    assert (await api.connector(con["id"]))["name"] == "office"


async def test_connector_names_keep_ordinary_unicode(api: Api) -> None:
    """Accents, CJK, right-to-left scripts and emoji (with a zero-width joiner) stay allowed."""
    for name in ("Zürich büro", "東京オフィス", "مكتب الرياض", "team \U0001f469\u200d\U0001f4bb"):
        con = await api.new_connector(name)
        assert (await api.connector(con["id"]))["name"] == name


# --------------------------------------------------------------- CSV formula cells

CSV_COLUMNS = [{"name": "=HEADER()", "type": "string"}, {"name": "note", "type": "string"},
               {"name": "qty", "type": "integer"}, {"name": "amount", "type": "decimal"}]
CSV_ROWS: list[list[Any]] = [
    ["=HYPERLINK(\"http://x\")", "+1+cmd|' /C calc'!A0", -5, "-5.20"],
    ["@SUM(A1:A2)", "-2+3", 7, "-1+cmd|'/C calc'!A0"],
    ["\tx=1", "\r=1", -0, "+3"],
    ["plain", "a=b", 1, "1.50"],
]


async def _csv_job(api: Api, agent: Any, *, objects: bool) -> str:
    from shared import protocol
    from shared.rows import encode_objects, encode_rows

    job_id = await api.submit(agent.connector_id)
    assign = await agent.expect("job.assign.v1", jobId=job_id)
    await agent.send("job.started.v1", jobId=job_id, attempt=assign["attempt"], columns=CSV_COLUMNS)
    names = [c["name"] for c in CSV_COLUMNS]
    payload = encode_objects(names, CSV_ROWS) if objects else encode_rows(CSV_ROWS)
    frame = protocol.encode_chunk(protocol.Chunk(job_id, assign["attempt"], 0, len(CSV_ROWS), payload))
    await agent.send_raw(frame)
    await agent.expect("job.chunk.ack.v1", jobId=job_id, seq=0)
    await agent.done(assign, 1, len(CSV_ROWS))
    return job_id


def _csv(text: str) -> list[list[str]]:
    import csv
    import io

    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.mark.parametrize("objects", [False, True], ids=["array-chunks", "object-line-chunks"])
async def test_csv_neutralises_formula_cells(api: Api, agent: Any, objects: bool) -> None:
    """Text starting with = + - @ tab or CR gets a leading ' (header included); numbers
    in numeric columns stay numbers, but text in them that is not a plain number does not."""
    job_id = await _csv_job(api, agent, objects=objects)
    status, text, _ = await api.call("GET", f"/jobs/{job_id}/results?format=csv")
    assert status == 200, text
    assert _csv(text) == [
        ["'=HEADER()", "note", "qty", "amount"],
        ["'=HYPERLINK(\"http://x\")", "'+1+cmd|' /C calc'!A0", "-5", "-5.20"],
        ["'@SUM(A1:A2)", "'-2+3", "7", "'-1+cmd|'/C calc'!A0"],
        ["'\tx=1", "'\r=1", "0", "+3"],
        ["plain", "a=b", "1", "1.50"],
    ]
    # The documented way to the raw values.
    status, text, _ = await api.call("GET", f"/jobs/{job_id}/results?format=csv&csvFormulas=raw")
    assert status == 200
    assert _csv(text)[0][0] == "=HEADER()" and _csv(text)[1][:2] == [CSV_ROWS[0][0], CSV_ROWS[0][1]]
    # NDJSON is data, not a spreadsheet: untouched.
    _, text, _ = await api.call("GET", f"/jobs/{job_id}/results")
    assert text.splitlines()[0].startswith('{"=HEADER()":"=HYPERLINK(')


async def test_csv_formulas_option_is_checked(api: Api, agent: Any) -> None:
    job_id = await _csv_job(api, agent, objects=False)
    status, body, _ = await api.call("GET", f"/jobs/{job_id}/results?format=csv&csvFormulas=yes")
    assert status == 422 and body["error"]["details"]["field"] == "csvFormulas", body
    # NDJSON has no formulas to escape: the option is ignored there (as the document says)
    status, _, _ = await api.call("GET", f"/jobs/{job_id}/results?csvFormulas=raw")
    assert status == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=", "status"),  # empty: leave it out to mean "any"
        ("status=online&status=offline", "status"),  # which one?
        ("page=1&page=2", "page"),
        ("=online", ""),  # a value without a name
    ],
)
async def test_query_parameters_come_once_and_with_a_value(api: Api, query: str, field: str) -> None:
    status, body = await _get(api, f"/connectors?{query}")
    assert status == 422, body
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert body["error"]["details"]["field"] == field
    status, body = await _get(api, "/connectors?status=online&page=1")  # one each: fine
    assert status == 200, body


@pytest.mark.parametrize("value", ["2026-12-04", "2026-12-04T03:00:00", "yesterday", "2026-02-30T00:00:00Z"])
async def test_log_times_are_rfc_3339(api: Api, value: str) -> None:
    con = await api.new_connector()
    for name in ("since", "until"):
        status, body = await _get(api, f"/connectors/{con['id']}/logs?{name}={quote(value)}")
        assert status == 422 and body["error"]["details"]["field"] == name, body
    status, body = await _get(api, f"/connectors/{con['id']}/logs?since={quote('2026-12-04T03:00:00+05:30')}")
    assert status == 200, body
