"""The agent <-> relay wire protocol, sans I/O.

Everything both ends must agree on lives here: message types (versioned in their names,
``agent.hello.v1``), their fields and validation, which side may send which, the binary
chunk frame, size limits and the close-reason table. No sockets, no asyncio: bytes or
text go in, validated ``Message``/``Chunk`` objects come out, and the reverse. Anything
malformed raises ``ProtocolError`` with a sentence saying what was wrong.

Text frames carry one JSON object: ``{"type": "<name>", ...fields}``.
Binary frames carry result chunks::

    byte 0      frame kind (1 = chunk)
    byte 1      flags (bit 0: payload is zlib-compressed; bit 1: one zstd frame that
                records its size, sent only to a relay whose welcome says ``zstdChunks``)
    bytes 2-3   header length H, big-endian
    H bytes     JSON header {"jobId", "attempt", "seq", "rows"} (H <= MAX_CHUNK_HEADER)
    the rest    payload: a JSON array of rows, each an array in column order, or object
                lines; decompressed at most MAX_CHUNK_PAYLOAD bytes and MAX_CHUNK_RATIO
                times its compressed size (RATIO_FREE_BYTES always allowed)

``read_chunk_head`` reads a frame's header without its payload, so a receiver checks who
a frame is for before any work on what it carries; ``bound_chunk`` reads a zstd payload's
recorded size (refusing it past the limits) and ``chunk_payload`` then decompresses.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import orjson

from . import zstdframes
from .errors import ProtocolError

PROTOCOL_VERSION: Final = 1
MAX_TEXT_FRAME: Final = 1 << 20  # 1 MiB
MAX_BINARY_FRAME: Final = 16 << 20  # 16 MiB: a chunk's header and payload
MAX_CHUNK_ROWS_BYTES: Final = 8 << 20  # what the agent aims a chunk's payload at, at most
MAX_DECOMPRESSED: Final = 64 << 20  # a chunk at rest (relay/atrest.py), stored by any version
# A chunk payload on the wire, once decompressed: at most ``maxChunkBytes``' ceiling, and
# at most MAX_CHUNK_RATIO times its compressed size (but any payload may reach
# RATIO_FREE_BYTES). Over either the frame is refused (docs/SECURITY.md, "Hostile agents").
MAX_CHUNK_PAYLOAD: Final = 16 << 20
MAX_CHUNK_RATIO: Final = 256
RATIO_FREE_BYTES: Final = 1 << 20
MAX_CHUNK_HEADER: Final = 1024  # bytes of a chunk frame's JSON header
MAX_ID_LEN: Final = 64
MAX_NAME_LEN: Final = 200

AGENT = "agent"
RELAY = "relay"

JOB_STATUSES_FINAL = ("succeeded", "failed", "cancelled", "timed_out")
OPERATIONS = ("query", "discover", "test")
# The log levels agents ship and the relay stores, with the numbers of Python's logging.
LOG_LEVEL_NUMBERS: Final = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
LOG_LEVELS: Final = tuple(LOG_LEVEL_NUMBERS)

# ---------------------------------------------------------------- close reasons
# WebSocket close code -> (name, terminal?, minimum seconds before reconnecting).
# Both sides read this table: the relay to choose a code, the agent to decide what to do.
CLOSE_REASONS: Final[dict[int, tuple[str, bool, float]]] = {
    1000: ("NORMAL", False, 0.0),
    1001: ("GOING_AWAY", False, 0.0),
    1011: ("INTERNAL_ERROR", False, 1.0),
    1012: ("SERVICE_RESTART", False, 1.0),
    4001: ("UNAUTHORIZED", False, 60.0),
    4003: ("REVOKED", False, 60.0),
    4008: ("PROTOCOL_VIOLATION", False, 5.0),
    4009: ("DUPLICATE_CONNECTION", False, 60.0),
    4010: ("SESSION_REPLACED", True, 0.0),
    4011: ("HEARTBEAT_TIMEOUT", False, 1.0),
}
CLOSE_CODES: Final = {name: code for code, (name, _, _) in CLOSE_REASONS.items()}


def close_reason(code: int | None) -> tuple[str, bool, float]:
    """(name, terminal, minimum delay) for a close code; unknown codes are retryable.
    1006 is never sent: the WebSocket library reports it for a connection lost without a
    closing handshake (the network dropped it), which the backoff alone paces."""
    if code is None or code == 1006:
        return ("ABNORMAL", False, 0.0)
    return CLOSE_REASONS.get(code, ("UNKNOWN", False, 1.0))


# ---------------------------------------------------------------- field specs


@dataclass(frozen=True)
class F:
    """One field of a message: its JSON kind and limits."""

    kind: str  # str | int | num | bool | list | obj | any
    required: bool = True
    nullable: bool = False
    max_len: int | None = None
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    item: Callable[[Any, str], Any] | None = None  # validator for list items


def _check(value: Any, spec: F, where: str) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise ProtocolError(f"{where} must not be null")
    k = spec.kind
    if k == "str":
        if not isinstance(value, str):
            raise ProtocolError(f"{where} must be a string")
        if spec.max_len is not None and len(value) > spec.max_len:
            raise ProtocolError(f"{where} is longer than {spec.max_len} characters")
    elif k == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"{where} must be an integer")
    elif k == "num":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ProtocolError(f"{where} must be a number")
    elif k == "bool":
        if not isinstance(value, bool):
            raise ProtocolError(f"{where} must be true or false")
    elif k == "list":
        if not isinstance(value, list):
            raise ProtocolError(f"{where} must be a list")
        if spec.max_len is not None and len(value) > spec.max_len:
            raise ProtocolError(f"{where} has more than {spec.max_len} items")
        if spec.item is not None:
            value = [spec.item(v, f"{where}[{i}]") for i, v in enumerate(value)]
    elif k == "obj":
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be an object")
    if k in ("int", "num"):
        if spec.lo is not None and value < spec.lo:
            raise ProtocolError(f"{where} must be at least {spec.lo}")
        if spec.hi is not None and value > spec.hi:
            raise ProtocolError(f"{where} must be at most {spec.hi}")
    if spec.choices is not None and value not in spec.choices:
        raise ProtocolError(f"{where} must be one of {', '.join(map(str, spec.choices))}")
    return value


@dataclass(frozen=True)
class ObjectOf:
    """A list item that is an object with these fields (its validator, and what
    ``json_schema`` reads to describe it)."""

    fields: Mapping[str, F]

    def __call__(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where} must be an object")
        return validate_fields(value, self.fields, where)


@dataclass(frozen=True)
class ItemOf:
    """A list item that is one plain value, checked as ``spec`` says."""

    spec: F

    def __call__(self, value: Any, where: str) -> Any:
        return _check(value, self.spec, where)



def validate_fields(data: Mapping[str, Any], fields: Mapping[str, F], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in data:
            if spec.required:
                raise ProtocolError(f"{where}.{name} is missing")
            continue
        out[name] = _check(data[name], spec, f"{where}.{name}")
    # Unknown fields are ignored (forward compatibility within a version), not kept.
    return out


ID = F("str", max_len=MAX_ID_LEN)
ATTEMPT = F("int", lo=1, hi=1_000_000)
_COLUMN = ObjectOf({"name": F("str", max_len=1000), "type": F("str", max_len=100)})
_SOURCE = ObjectOf({"name": F("str", max_len=MAX_NAME_LEN), "type": F("str", max_len=50)})
JOB_ERROR = {
    "code": F("str", max_len=64),
    "message": F("str", max_len=8000),
    "retryable": F("bool"),
}


_kem_name = ItemOf(F("str", max_len=50))


_HELD_JOB = ObjectOf({"jobId": ID, "attempt": ATTEMPT})
_LOG_LINE = ObjectOf(
    {
        "timestamp": F("str", max_len=64),
        "level": F("str", choices=LOG_LEVELS),
        "message": F("str", max_len=16_000),
        "logger": F("str", required=False, nullable=True, max_len=200),
        "jobId": F("str", required=False, nullable=True, max_len=MAX_ID_LEN),
        # Optional: the agent's stable, increasing id for the line; the relay stores a
        # line once per id, so an agent catching up after a cut may resend safely.
        "id": F("int", required=False, nullable=True, lo=0, hi=2**63 - 1),
    }
)

# type -> (who may send it, fields)
MESSAGES: Final[dict[str, tuple[str, dict[str, F]]]] = {
    # agent -> relay
    "agent.hello.v1": (
        AGENT,
        {
            "protocolVersion": F("int", lo=1, hi=1000),
            "agentVersion": F("str", max_len=50),
            "hostname": F("str", max_len=255),
            "os": F("str", max_len=50),
            "publicKey": F("str", max_len=200),
            "capacity": F("int", lo=1, hi=256),
            "sources": F("list", max_len=1000, item=_SOURCE),
            "heldJobs": F("list", required=False, max_len=1000, item=_HELD_JOB),
            # Optional, backwards compatible: KEMs the agent can open (shared.crypto.KEM_*)
            # and, for the post-quantum hybrid, its ML-KEM-768 + X25519 public key.
            "kems": F("list", required=False, max_len=10, item=_kem_name),
            "pqPublicKey": F("str", required=False, max_len=2000),
        },
    ),
    "agent.heartbeat.v1": (
        AGENT,
        {
            "cpuUsage": F("num", lo=0, hi=100),
            "memoryUsage": F("num", lo=0, hi=100),
            "rss": F("int", lo=0),
            "activeJobs": F("int", lo=0, hi=100_000),
            "capacity": F("int", lo=1, hi=256),
            "version": F("str", max_len=50),
        },
    ),
    # Sent when the agent begins the job and again, with ``columns``, once the query has
    # produced them (before any chunk). Optional ``columns``, backwards compatible: an
    # agent may send only the one with columns; without a relay's ``startedWithoutColumns``
    # in the welcome, it must.
    "job.started.v1": (
        AGENT,
        {
            "jobId": ID,
            "attempt": ATTEMPT,
            "columns": F("list", required=False, max_len=10_000, item=_COLUMN),
        },
    ),
    "job.done.v1": (
        AGENT,
        {
            "jobId": ID,
            "attempt": ATTEMPT,
            "status": F("str", choices=JOB_STATUSES_FINAL),
            "chunks": F("int", lo=0),
            "rowCount": F("int", lo=0),
            "byteCount": F("int", lo=0),
            "error": F("obj", nullable=True, required=False),
            # Optional: maxRows cut the result (the source had at least one more row).
            "truncated": F("bool", required=False),
        },
    ),
    "agent.logs.v1": (AGENT, {"lines": F("list", max_len=1000, item=_LOG_LINE)}),
    # The agent's sources changed while it runs (its admin ran 'source add/remove'): the
    # whole new list, as in the hello. Sent only to a relay whose welcome says
    # ``sourceUpdates``; an older relay learns the list at the next hello.
    "agent.sources.v1": (AGENT, {"sources": F("list", max_len=1000, item=_SOURCE)}),
    # relay -> agent
    "relay.welcome.v1": (
        RELAY,
        {
            "protocolVersion": F("int", lo=1),
            "connectorId": ID,
            "heartbeatInterval": F("num", lo=0.05, hi=3600),
            "window": F("int", lo=1, hi=1024),
            "maxChunkBytes": F("int", lo=1024, hi=MAX_CHUNK_PAYLOAD),
            "logLevel": F("str", required=False, choices=LOG_LEVELS),
            # Optional: the newest agent log line id the relay holds for this connector;
            # the agent catches up from its local log with the lines after it.
            "logsThrough": F("int", required=False, nullable=True, lo=0, hi=2**63 - 1),
            # Optional: the relay accepts job.started.v1 without columns (an older relay
            # does not; the agent then sends only the one with columns).
            "startedWithoutColumns": F("bool", required=False),
            # Optional: the relay takes zstd-compressed chunks (flag bit 1); an older relay
            # does not, and the agent compresses with zlib as before.
            "zstdChunks": F("bool", required=False),
            # Optional: the relay takes agent.sources.v1 (a running agent's new source list).
            "sourceUpdates": F("bool", required=False),
        },
    ),
    "job.assign.v1": (
        RELAY,
        {
            "jobId": ID,
            "attempt": ATTEMPT,
            "source": F("str", max_len=MAX_NAME_LEN),
            "operation": F("str", choices=OPERATIONS),
            "sealed": F("str", nullable=True, max_len=MAX_TEXT_FRAME),
            "options": F("obj", required=False),
        },
    ),
    "job.cancel.v1": (
        RELAY,
        {"jobId": ID, "attempt": ATTEMPT, "reason": F("str", max_len=64, required=False)},
    ),
    "job.chunk.ack.v1": (RELAY, {"jobId": ID, "attempt": ATTEMPT, "seq": F("int", lo=0)}),
    "job.done.ack.v1": (RELAY, {"jobId": ID, "attempt": ATTEMPT}),
    "relay.error.v1": (
        RELAY,
        {"code": F("str", max_len=64), "message": F("str", max_len=2000)},
    ),
    "relay.reconnect.v1": (RELAY, {"delaySeconds": F("num", lo=0, hi=3600, required=False)}),
    "agent.config.v1": (RELAY, {"logLevel": F("str", choices=LOG_LEVELS)}),
}


@dataclass(frozen=True)
class Message:
    """A validated text message. ``data`` holds the fields without ``type``."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


@dataclass(frozen=True)
class Chunk:
    """One binary chunk of result rows. ``payload`` stays opaque bytes (uncompressed)."""

    job_id: str
    attempt: int
    seq: int
    rows: int
    payload: bytes


@dataclass(frozen=True)
class ChunkHead:
    """A chunk frame's header, read without touching its payload (``read_chunk_head``):
    enough to check who the frame is for before any work on what it carries."""

    job_id: str
    attempt: int
    seq: int
    rows: int
    flags: int
    offset: int  # where the payload starts in the frame
    packed: int  # the payload's size in the frame
    declared: int | None  # a zstd payload's recorded decompressed size

    @property
    def codec(self) -> str | None:
        return "zlib" if self.flags & FLAG_ZLIB else "zstd" if self.flags & FLAG_ZSTD else None

    @property
    def bound(self) -> int:
        """The most bytes the payload may become: its own size, a zstd frame's recorded
        size, or for zlib the limit it is decompressed to (``payload_limit``)."""
        if self.codec is None:
            return self.packed
        if self.declared is not None:
            return self.declared
        return payload_limit(self.packed)


def make(type_: str, **fields: Any) -> Message:
    """Build a message, validating it exactly as the receiver will."""
    if type_ not in MESSAGES:
        raise ProtocolError(f"unknown message type {type_!r}")
    _, spec = MESSAGES[type_]
    return Message(type_, validate_fields(fields, spec, type_))


def job_error(code: str, message: str, retryable: bool) -> dict[str, Any]:
    return {"code": code, "message": message[:8000], "retryable": retryable}


def encode(msg: Message) -> str:
    return orjson.dumps({"type": msg.type, **msg.data}).decode("utf-8")


def decode_text(data: str | bytes, *, sender: str) -> Message:
    """Parse and validate one text frame sent by ``sender`` (AGENT or RELAY)."""
    return validate_text(parse_text(data), sender=sender)


def parse_text(data: str | bytes) -> dict[str, Any]:
    """A text frame's JSON object, not validated yet (``validate_text``): a receiver may
    look at it first (the relay trims a log batch to its budget before validating it)."""
    if len(data) > MAX_TEXT_FRAME:
        raise ProtocolError(f"text frame larger than {MAX_TEXT_FRAME} bytes")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("text frame is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("text frame must be a JSON object")
    return obj  # type: ignore[no-any-return]


def validate_text(obj: dict[str, Any], *, sender: str) -> Message:
    """``parse_text``'s object as a validated message from ``sender``."""
    type_ = obj.get("type")
    if not isinstance(type_, str):
        raise ProtocolError("message has no 'type'")
    entry = MESSAGES.get(type_)
    if entry is None:
        raise ProtocolError(f"unknown message type {type_[:80]!r}")
    who, spec = entry
    if who != sender:
        raise ProtocolError(f"{type_} may not be sent by the {sender}")
    msg = Message(type_, validate_fields(obj, spec, type_))
    if type_ == "job.done.v1":
        _check_done(msg)
    return msg


def _check_done(msg: Message) -> None:
    err = msg.get("error")
    if err is not None:
        msg.data["error"] = validate_fields(err, JOB_ERROR, "job.done.v1.error")
    if msg["status"] != "succeeded" and err is None:
        raise ProtocolError("job.done.v1 with a status other than succeeded needs an error")


# ---------------------------------------------------------------- binary chunks

FRAME_CHUNK: Final = 1
FLAG_ZLIB: Final = 1
FLAG_ZSTD: Final = 2
_PREFIX = struct.Struct("!BBH")
COMPRESS_MIN_BYTES: Final = 64 * 1024  # below this, compression costs more than it saves


def payload_limit(packed: int) -> int:
    """The most a compressed payload of ``packed`` bytes may decompress to."""
    return min(MAX_CHUNK_PAYLOAD, max(RATIO_FREE_BYTES, packed * MAX_CHUNK_RATIO))


def encode_chunk(chunk: Chunk, *, compress: str | None = None) -> bytes:
    """The binary frame of ``chunk``; ``compress`` is ``zstd``, ``zlib`` or None. A payload
    under ``COMPRESS_MIN_BYTES``, one that compresses by less than 10 %, or one that
    compresses past what a relay accepts (``payload_limit``) goes as it is."""
    payload, flags = chunk.payload, 0
    if compress and len(payload) >= COMPRESS_MIN_BYTES:
        if compress == "zstd":
            packed, flag = zstdframes.compress(payload), FLAG_ZSTD
        elif compress == "zlib":
            packed, flag = zlib.compress(payload, 1), FLAG_ZLIB
        else:
            raise ValueError(f"unknown chunk compression {compress!r}")
        if len(packed) < len(payload) * 0.9 and len(payload) <= payload_limit(len(packed)):
            payload, flags = packed, flag
    header = orjson.dumps(
        {"jobId": chunk.job_id, "attempt": chunk.attempt, "seq": chunk.seq, "rows": chunk.rows}
    )
    return _PREFIX.pack(FRAME_CHUNK, flags, len(header)) + header + payload


def chunk_flags(frame: bytes) -> int:
    """The flags byte of an encoded chunk frame (which compression it carries)."""
    return frame[1] if len(frame) > 1 else 0


CHUNK_HEADER = {"jobId": ID, "attempt": ATTEMPT, "seq": F("int", lo=0), "rows": F("int", lo=0)}
_MiB = 1 << 20


def read_chunk_head(data: bytes) -> ChunkHead:
    """A binary frame's kind, flags and JSON header, checked; the payload is not read
    (``bound_chunk`` then reads a zstd payload's recorded size, ``chunk_payload`` it all)."""
    if len(data) > MAX_BINARY_FRAME:
        raise ProtocolError(f"binary frame larger than {MAX_BINARY_FRAME} bytes")
    if len(data) < _PREFIX.size:
        raise ProtocolError("binary frame too short")
    kind, flags, hlen = _PREFIX.unpack_from(data)
    if kind != FRAME_CHUNK:
        raise ProtocolError(f"unknown binary frame kind {kind}")
    if flags not in (0, FLAG_ZLIB, FLAG_ZSTD):
        raise ProtocolError("unknown binary frame flags")
    if hlen > MAX_CHUNK_HEADER:
        raise ProtocolError(f"chunk header longer than {MAX_CHUNK_HEADER} bytes")
    end = _PREFIX.size + hlen
    if end > len(data):
        raise ProtocolError("binary frame header runs past the frame")
    try:
        header = orjson.loads(memoryview(data)[_PREFIX.size : end])
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("chunk header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise ProtocolError("chunk header must be a JSON object")
    h = validate_fields(header, CHUNK_HEADER, "chunk")
    return ChunkHead(h["jobId"], h["attempt"], h["seq"], h["rows"], flags, end, len(data) - end, None)


def bound_chunk(head: ChunkHead, data: bytes) -> ChunkHead:
    """``head`` with a zstd payload's recorded size, read from its frame header alone and
    checked against the limits (a frame that records none, or too much, is refused)."""
    if not head.flags & FLAG_ZSTD:
        return head
    try:
        declared = zstdframes.declared_size(memoryview(data)[head.offset :])
    except ValueError as exc:
        raise ProtocolError(f"chunk {head.seq}: {exc}") from None
    _check_size(head.seq, declared, head.packed)
    return replace(head, declared=declared)


def _check_size(seq: int, size: int, packed: int) -> None:
    if size > MAX_CHUNK_PAYLOAD or payload_limit(packed) == MAX_CHUNK_PAYLOAD < size:
        raise ProtocolError(f"chunk {seq}: payload decompresses past the limit of {MAX_CHUNK_PAYLOAD // _MiB} MiB")
    if size > payload_limit(packed):
        raise ProtocolError(f"chunk {seq}: payload expands past the limit of {MAX_CHUNK_RATIO} times its "
                            "compressed size")  # fmt: skip


def chunk_payload(head: ChunkHead, data: bytes) -> bytes:
    """The payload of the frame ``data`` whose head is ``head``, decompressed within its
    limits (``payload_limit``), streaming: never more than the limit is produced."""
    view = memoryview(data)[head.offset :]
    if head.codec is None:
        return bytes(view)
    if head.codec == "zstd":
        try:
            return zstdframes.decompress(view, min(MAX_CHUNK_PAYLOAD, head.bound))
        except ValueError as exc:
            raise ProtocolError(f"chunk {head.seq}: {exc}") from None
    limit = payload_limit(head.packed)
    try:
        d = zlib.decompressobj()
        payload = d.decompress(view, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"chunk {head.seq}: payload is not valid zlib data") from exc
    if len(payload) > limit or d.unconsumed_tail:
        _check_size(head.seq, limit + 1, head.packed)  # says which limit it went past
    if not d.eof:  # a cut-off stream would otherwise yield a silently partial payload
        raise ProtocolError(f"chunk {head.seq}: payload is a truncated zlib stream")
    return payload


def decode_chunk(data: bytes) -> Chunk:
    """Parse a binary frame. The payload is decompressed but not parsed (it stays opaque)."""
    head = bound_chunk(read_chunk_head(data), data)
    return Chunk(head.job_id, head.attempt, head.seq, head.rows, chunk_payload(head, data))


def decode_frame(data: str | bytes, *, sender: str) -> Message | Chunk:
    """A frame as received from a WebSocket library: ``str`` is text, ``bytes`` binary."""
    if isinstance(data, str):
        return decode_text(data, sender=sender)
    if sender != AGENT:
        raise ProtocolError("only agents send binary frames")
    return decode_chunk(data)
