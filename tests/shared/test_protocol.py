"""Property and example tests of the sans-I/O wire protocol (shared/protocol.py)."""

from __future__ import annotations

import string
import struct
import zlib
from typing import Any

import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import protocol as p
from shared.errors import ProtocolError

# ---------------------------------------------------------------- strategies

_TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cs",)), max_size=40
)  # no lone surrogates: they are not valid UTF-8 and never reach us from a JSON parser
_IDS = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=64)
_JSON_SCALAR = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT | st.floats(
    allow_nan=False, allow_infinity=False
)
_JSON = st.recursive(
    _JSON_SCALAR,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_TEXT, kids, max_size=4),
    max_leaves=12,
)

_COLUMN = st.fixed_dictionaries({"name": _TEXT, "type": st.sampled_from(["integer", "string"])})
_SOURCE = st.fixed_dictionaries(
    {"name": st.text(max_size=30), "type": st.sampled_from(["sqlite", "postgres", "tally"])}
)
_HELD = st.fixed_dictionaries({"jobId": _IDS, "attempt": st.integers(1, 1_000_000)})
_LOG = st.fixed_dictionaries(
    {
        "timestamp": st.just("2026-11-24T10:00:00.123Z"),
        "level": st.sampled_from(p.LOG_LEVELS),
        "message": _TEXT,
    },
    optional={"logger": st.none() | _TEXT, "jobId": st.none() | _IDS},
)
_ERROR = st.fixed_dictionaries(
    {"code": st.sampled_from(["QUERY_FAILED", "TIMEOUT"]), "message": _TEXT, "retryable": st.booleans()}
)

# List fields validate their items with closures, so their strategies are written out.
_LISTS: dict[str, st.SearchStrategy[Any]] = {
    "sources": st.lists(_SOURCE, max_size=5),
    "heldJobs": st.lists(_HELD, max_size=5),
    "columns": st.lists(_COLUMN, max_size=5),
    "lines": st.lists(_LOG, max_size=5),
    "kems": st.lists(_TEXT, max_size=3),
}


def _field_strategy(name: str, spec: p.F) -> st.SearchStrategy[Any]:
    if spec.choices is not None:
        base: st.SearchStrategy[Any] = st.sampled_from(spec.choices)
    elif spec.kind == "str":
        base = st.text(
            alphabet=st.characters(exclude_categories=("Cs",)),
            max_size=min(spec.max_len or 40, 40),
        )
    elif spec.kind == "int":
        lo = int(spec.lo) if spec.lo is not None else -(2**53)
        hi = int(spec.hi) if spec.hi is not None else 2**53
        base = st.integers(lo, hi)
    elif spec.kind == "num":
        lo = spec.lo if spec.lo is not None else -1e12
        hi = spec.hi if spec.hi is not None else 1e12
        base = st.floats(lo, hi, allow_nan=False) | st.integers(int(lo) + 1, int(hi))
    elif spec.kind == "bool":
        base = st.booleans()
    elif spec.kind == "obj":
        base = st.dictionaries(_TEXT, _JSON, max_size=4)
    elif spec.kind == "list":
        base = _LISTS[name]
    else:
        base = _JSON
    return st.none() | base if spec.nullable else base


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    type_ = draw(st.sampled_from(sorted(p.MESSAGES)))
    sender, spec = p.MESSAGES[type_]
    fields: dict[str, Any] = {}
    for name, f in spec.items():
        if name == "error":
            continue
        if not f.required and draw(st.booleans()):
            continue
        fields[name] = draw(_field_strategy(name, f))
    if type_ == "job.done.v1":
        # A done message that did not succeed must say why.
        if fields["status"] != "succeeded" or draw(st.booleans()):
            fields["error"] = draw(_ERROR)
    return type_, sender, fields


# ---------------------------------------------------------------- messages


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(valid_messages())
def test_every_message_type_round_trips(case: tuple[str, str, dict[str, Any]]) -> None:
    """make -> encode -> decode_text gives back the same message, for every type."""
    type_, sender, fields = case
    msg = p.make(type_, **fields)
    back = p.decode_text(p.encode(msg), sender=sender)
    assert back == msg
    assert p.decode_frame(p.encode(msg), sender=sender) == msg


def test_every_message_type_is_covered_by_the_strategy() -> None:
    """Each list field in the table has a strategy, so no message type is skipped."""
    for _type, (_who, spec) in p.MESSAGES.items():
        for name, f in spec.items():
            if f.kind == "list":
                assert name in _LISTS


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    """Arbitrary binary frames from either side fail with ProtocolError, nothing else."""
    for sender in (p.AGENT, p.RELAY):
        try:
            p.decode_frame(data, sender=sender)
        except ProtocolError:
            pass
    try:
        p.decode_text(data, sender=p.AGENT)
    except ProtocolError:
        pass


@settings(max_examples=500)
@given(_JSON)
def test_random_json_raises_only_protocol_error(value: Any) -> None:
    """Arbitrary JSON text frames are rejected with ProtocolError (or accepted), never crash."""
    text = orjson.dumps(value).decode()
    for sender in (p.AGENT, p.RELAY):
        try:
            p.decode_frame(text, sender=sender)
        except ProtocolError:
            pass


@settings(max_examples=800)
@given(
    st.sampled_from(sorted(p.MESSAGES)),
    st.dictionaries(st.sampled_from(sorted({n for _, s in p.MESSAGES.values() for n in s})), _JSON),
)
def test_known_type_with_random_fields_raises_only_protocol_error(
    type_: str, fields: dict[str, Any]
) -> None:
    """A real message type with fields of random shape is validated, never crashes."""
    text = orjson.dumps({"type": type_, **fields}).decode()
    for sender in (p.AGENT, p.RELAY):
        try:
            p.decode_frame(text, sender=sender)
        except ProtocolError:
            pass


def _hello(**over: Any) -> dict[str, Any]:
    base = {
        "type": "agent.hello.v1",
        "protocolVersion": 1,
        "agentVersion": "0.1.0",
        "hostname": "h",
        "os": "linux",
        "publicKey": "x" * 44,
        "capacity": 4,
        "sources": [{"name": "erp", "type": "sqlite"}],
    }
    base.update(over)
    return base


def test_valid_hello_decodes() -> None:
    """The baseline hello used by the negative cases below is itself valid."""
    msg = p.decode_text(orjson.dumps(_hello()), sender=p.AGENT)
    assert msg.type == "agent.hello.v1" and msg["capacity"] == 4


@pytest.mark.parametrize(
    "over",
    [
        {"capacity": "4"},
        {"capacity": 0},
        {"capacity": 1000},
        {"capacity": True},
        {"capacity": 4.0},
        {"sources": {"name": "erp"}},
        {"sources": [{"name": "erp"}]},
        {"sources": ["erp"]},
        {"hostname": None},
        {"hostname": "h" * 256},
        {"protocolVersion": None},
    ],
)
def test_wrong_field_types_are_rejected(over: dict[str, Any]) -> None:
    """Wrong kinds, out-of-range numbers, bad list items and nulls are ProtocolErrors."""
    with pytest.raises(ProtocolError):
        p.decode_text(orjson.dumps(_hello(**over)), sender=p.AGENT)


def test_missing_field_is_rejected_with_its_name() -> None:
    """The error names the missing field."""
    hello = _hello()
    del hello["publicKey"]
    with pytest.raises(ProtocolError, match="publicKey"):
        p.decode_text(orjson.dumps(hello), sender=p.AGENT)


@pytest.mark.parametrize(
    "text",
    ['{"type": "agent.nonsense.v9"}', '{"type": 5}', "{}", "[]", '"hello"', "nul", "{" * 5000],
)
def test_unknown_or_typeless_frames_are_rejected(text: str) -> None:
    """Unknown types, missing types, non-objects and deep nesting are ProtocolErrors."""
    with pytest.raises(ProtocolError):
        p.decode_text(text, sender=p.AGENT)


def test_make_rejects_unknown_type() -> None:
    with pytest.raises(ProtocolError):
        p.make("agent.nonsense.v9")


@pytest.mark.parametrize(
    ("type_", "wrong_sender"),
    [(t, p.RELAY if who == p.AGENT else p.AGENT) for t, (who, _) in sorted(p.MESSAGES.items())],
)
def test_message_from_the_wrong_side_is_rejected(type_: str, wrong_sender: str) -> None:
    """Every type is accepted only from the side the table names."""
    text = orjson.dumps({"type": type_}).decode()
    with pytest.raises(ProtocolError, match="may not be sent"):
        p.decode_text(text, sender=wrong_sender)


def test_relay_may_not_send_binary_frames() -> None:
    data = p.encode_chunk(p.Chunk("job_1", 1, 0, 1, b"[[1]]"))
    with pytest.raises(ProtocolError):
        p.decode_frame(data, sender=p.RELAY)


def test_oversized_text_frame_is_rejected() -> None:
    """A text frame over MAX_TEXT_FRAME is refused before parsing."""
    big = orjson.dumps({"type": "agent.logs.v1", "lines": [], "pad": "x" * p.MAX_TEXT_FRAME})
    with pytest.raises(ProtocolError, match="larger"):
        p.decode_text(big, sender=p.AGENT)
    with pytest.raises(ProtocolError, match="larger"):
        p.decode_frame(big.decode(), sender=p.AGENT)


def test_done_without_error_for_failed_status_is_rejected() -> None:
    """A failed job must carry an error object with code, message, retryable."""
    done = {"type": "job.done.v1", "jobId": "j", "attempt": 1, "status": "failed",
            "chunks": 0, "rowCount": 0, "byteCount": 0}  # fmt: skip
    with pytest.raises(ProtocolError, match="needs an error"):
        p.decode_text(orjson.dumps(done), sender=p.AGENT)
    done["error"] = {"code": "QUERY_FAILED"}
    with pytest.raises(ProtocolError, match="message"):
        p.decode_text(orjson.dumps(done), sender=p.AGENT)


def test_started_may_come_without_columns_and_old_started_with_columns_still_decodes() -> None:
    """job.started.v1 without columns (the job began) and with them (as older agents send
    it, and as the agent sends it once the query has its columns) both decode; columns, when
    present, are still checked."""
    began = p.decode_text(orjson.dumps({"type": "job.started.v1", "jobId": "j", "attempt": 1}), sender=p.AGENT)
    assert began.get("columns") is None and "columns" not in began.data
    old = {"type": "job.started.v1", "jobId": "j", "attempt": 1, "columns": [{"name": "a", "type": "int"}]}
    assert p.decode_text(orjson.dumps(old), sender=p.AGENT)["columns"] == [{"name": "a", "type": "int"}]
    for bad in (None, [{"name": "a"}], "a"):
        with pytest.raises(ProtocolError, match="columns"):
            p.decode_text(orjson.dumps({**old, "columns": bad}), sender=p.AGENT)
    welcome = {"type": "relay.welcome.v1", "protocolVersion": 1, "connectorId": "c",
               "heartbeatInterval": 15, "window": 8, "maxChunkBytes": 1 << 20}  # fmt: skip
    assert p.decode_text(orjson.dumps(welcome), sender=p.RELAY).get("startedWithoutColumns") is None
    both = p.decode_text(orjson.dumps({**welcome, "startedWithoutColumns": True}), sender=p.RELAY)
    assert both["startedWithoutColumns"] is True
    with pytest.raises(ProtocolError, match="startedWithoutColumns"):
        p.decode_text(orjson.dumps({**welcome, "startedWithoutColumns": "yes"}), sender=p.RELAY)


def test_unknown_fields_are_dropped() -> None:
    """Forward compatibility: extra fields are ignored, not kept."""
    msg = p.decode_text(orjson.dumps(_hello(futureField=1)), sender=p.AGENT)
    assert "futureField" not in msg.data


# ---------------------------------------------------------------- chunks

_PAYLOADS = st.one_of(
    st.binary(max_size=2000),
    # Large and repetitive: exercises the compressed path.
    st.integers(p.COMPRESS_MIN_BYTES, 3 * p.COMPRESS_MIN_BYTES).map(
        lambda n: (b'[1,"abc",null],' * (n // 15 + 1))[:n]
    ),
)


@settings(max_examples=100)
@given(_IDS, st.integers(1, 1_000_000), st.integers(0, 2**40), st.integers(0, 2**31), _PAYLOADS,
       st.sampled_from([None, "zlib", "zstd"]))  # fmt: skip
def test_chunks_round_trip_with_and_without_compression(
    job_id: str, attempt: int, seq: int, rows: int, payload: bytes, compress: str | None
) -> None:
    """encode_chunk/decode_chunk preserve every field and the exact payload bytes."""
    chunk = p.Chunk(job_id, attempt, seq, rows, payload)
    frame = p.encode_chunk(chunk, compress=compress)
    assert p.decode_chunk(frame) == chunk
    assert p.decode_frame(frame, sender=p.AGENT) == chunk
    if compress and len(payload) >= p.COMPRESS_MIN_BYTES and len(set(payload)) < 20:
        flag = p.FLAG_ZSTD if compress == "zstd" else p.FLAG_ZLIB
        assert p.chunk_flags(frame) == flag, "a large repetitive payload should be compressed"
        assert len(frame) < len(payload)
    if not compress:
        assert frame[1] == 0


def _zstd_frame(data: bytes, **kw: Any) -> bytes:
    return zstandard.ZstdCompressor(level=1, **kw).compress(data)


def _lying_size(frame: bytes, size: int) -> bytes:
    """``frame`` (multi-segment, 4-byte content size field) claiming ``size`` bytes."""
    fhd = frame[4]
    assert fhd >> 6 == 2 and not (fhd >> 5) & 1 and not fhd & 3
    return frame[:6] + struct.pack("<I", size) + frame[10:]


def _raw_chunk(header: Any, payload: bytes, *, kind: int = 1, flags: int = 0) -> bytes:
    h = orjson.dumps(header)
    return struct.pack("!BBH", kind, flags, len(h)) + h + payload


_GOOD_HEADER = {"jobId": "job_1", "attempt": 1, "seq": 0, "rows": 1}


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x01",
        b"\x01\x00\x00",
        _raw_chunk(_GOOD_HEADER, b"[]", kind=2),
        _raw_chunk(_GOOD_HEADER, b"[]", flags=3),
        _raw_chunk(_GOOD_HEADER, b"[]", flags=4),
        _raw_chunk([1, 2], b"[]"),
        _raw_chunk({"jobId": "j"}, b"[]"),
        _raw_chunk({**_GOOD_HEADER, "seq": -1}, b"[]"),
        _raw_chunk({**_GOOD_HEADER, "attempt": 0}, b"[]"),
        _raw_chunk({**_GOOD_HEADER, "jobId": "j" * 65}, b"[]"),
        struct.pack("!BBH", 1, 0, 500) + b"{}",
        struct.pack("!BBH", 1, 0, 3) + b"{{{",
        _raw_chunk(_GOOD_HEADER, b"not zlib at all", flags=1),
        _raw_chunk(_GOOD_HEADER, zlib.compress(b"[[1]]" * 1000)[:-8], flags=1),
        _raw_chunk(_GOOD_HEADER, b"not zstd at all", flags=2),
        _raw_chunk(_GOOD_HEADER, _zstd_frame(b"[[1]]" * 1000)[:-8], flags=2),  # cut short
        _raw_chunk(_GOOD_HEADER, _zstd_frame(b"[[1]]" * 1000) + b"[[2]]", flags=2),  # bytes after
        _raw_chunk(_GOOD_HEADER, _zstd_frame(b"[[1]]" * 1000) * 2, flags=2),  # two frames
        _raw_chunk(_GOOD_HEADER, _zstd_frame(b"[[1]]", write_content_size=False), flags=2),  # no size
        _raw_chunk(_GOOD_HEADER, zlib.compress(b"[[1]]" * 1000), flags=2),  # zlib flagged zstd
        _raw_chunk(_GOOD_HEADER, _zstd_frame(b"[[1]]" * 1000), flags=1),  # zstd flagged zlib
    ],
    ids=lambda f: repr(f[:12]),
)
def test_malformed_chunks_are_rejected(frame: bytes) -> None:
    """Short frames, unknown kinds/flags, bad headers, broken or truncated zlib or zstd
    (cut short, trailing bytes, no recorded size, the other codec's bytes) fail cleanly."""
    with pytest.raises(ProtocolError):
        p.decode_chunk(frame)


def test_oversized_binary_frame_is_rejected() -> None:
    frame = _raw_chunk(_GOOD_HEADER, b"\0" * (p.MAX_BINARY_FRAME + 1))
    with pytest.raises(ProtocolError, match="larger"):
        p.decode_chunk(frame)


def test_zlib_bomb_is_rejected() -> None:
    """A small compressed payload that inflates past MAX_DECOMPRESSED is refused."""
    packer = zlib.compressobj(9)
    block = b"\0" * (1 << 20)
    parts = [packer.compress(block) for _ in range((p.MAX_DECOMPRESSED >> 20) + 2)]
    bomb = b"".join(parts) + packer.flush()
    assert len(bomb) < p.MAX_BINARY_FRAME // 8
    with pytest.raises(ProtocolError, match="limit"):
        p.decode_chunk(_raw_chunk(_GOOD_HEADER, bomb, flags=1))


def test_zstd_bomb_is_refused_before_and_while_decompressing() -> None:
    """A zstd frame recording a size past MAX_DECOMPRESSED is refused before any work; one
    whose recorded size is a lie stops at that size instead of inflating."""
    big = _zstd_frame(b"\0" * (p.MAX_DECOMPRESSED + (1 << 20)))
    assert len(big) < p.MAX_BINARY_FRAME // 8
    with pytest.raises(ProtocolError, match="limit"):
        p.decode_chunk(_raw_chunk(_GOOD_HEADER, big, flags=2))
    liar = _lying_size(_zstd_frame(b"\0" * (32 << 20)), 100)
    assert zstandard.frame_content_size(liar) == 100
    with pytest.raises(ProtocolError, match="zstd"):
        p.decode_chunk(_raw_chunk(_GOOD_HEADER, liar, flags=2))


def test_an_unknown_codec_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="brotli"):
        p.encode_chunk(p.Chunk("job_1", 1, 0, 1, b"x" * p.COMPRESS_MIN_BYTES), compress="brotli")


def test_zstd_chunks_in_the_welcome_are_optional_and_boolean() -> None:
    welcome = {"type": "relay.welcome.v1", "protocolVersion": 1, "connectorId": "con_1",
               "heartbeatInterval": 15, "window": 8, "maxChunkBytes": 1 << 20}  # fmt: skip
    assert p.decode_text(orjson.dumps(welcome), sender=p.RELAY).get("zstdChunks") is None
    assert p.decode_text(orjson.dumps({**welcome, "zstdChunks": True}), sender=p.RELAY)["zstdChunks"] is True
    with pytest.raises(ProtocolError, match="zstdChunks"):
        p.decode_text(orjson.dumps({**welcome, "zstdChunks": 1}), sender=p.RELAY)


# ---------------------------------------------------------------- close reasons


def test_close_reason_table() -> None:
    """Known codes come from the table; None is abnormal and unknown codes are retryable."""
    assert p.close_reason(4010) == ("SESSION_REPLACED", True, 0.0)
    assert p.close_reason(4001)[2] >= 60, "a refused key must back off at least 60 s"
    assert p.close_reason(4009)[2] >= 60
    assert p.close_reason(None)[0] == "ABNORMAL"
    assert p.close_reason(1006) == ("ABNORMAL", False, 0.0)  # a dropped link: the backoff paces it
    assert p.close_reason(4999) == ("UNKNOWN", False, 1.0)
    for code, (name, _, _) in p.CLOSE_REASONS.items():
        assert p.CLOSE_CODES[name] == code
