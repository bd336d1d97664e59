"""A job's whole life in one place, with no I/O: statuses, the transition table, the
retry and lease policy, and the options with their defaults.

The table is the documentation (like h11's ``_state.py``). Every change of a job's status
is an *event* looked up here: ``step(status, event)`` returns the next status or raises
``IllegalTransition``. The store applies the step as a compare-and-set, so two racing
changes cannot both win (relay/store/queue.py); this module only says what is legal.

::

    queued --dispatch--> dispatched --start--> running --succeed/fail/cancel/time_out--> final
      |                      |                   |
      |                      +--requeue/retry----+--> queued (next attempt)
      +--cancel/fail/expire--> final

An agent may finish a job it never reported as started (it could not open the seal), hence
the dispatched -> final entries. ``requeue`` is an attempt that was lost (its lease lapsed,
or the agent no longer holds it): back at once. ``retry`` is an attempt that failed with
a retryable error: back after ``retryDelaySeconds``. ``record_columns`` changes no status:
a running job learns its result's columns.

Retry policy: an attempt that ends without a result goes back to the queue while
``should_retry(attempt, retryLimit)``, else the job fails with the last error.
Lease policy: a dispatched job is leased to its connector for ``lease_seconds`` (the
relay's ``MC_RELAY_OFFLINE_AFTER``) from the agent's last traffic; the agent's traffic
renews it, and a lapsed lease is a ``requeue``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from shared.errors import Conflict, ValidationError

QUEUED, DISPATCHED, RUNNING = "queued", "dispatched", "running"
SUCCEEDED, FAILED, CANCELLED, EXPIRED, TIMED_OUT = (
    "succeeded", "failed", "cancelled", "expired", "timed_out",
)  # fmt: skip
STATUSES: Final = (QUEUED, DISPATCHED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED, TIMED_OUT)
FINAL: Final = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED, TIMED_OUT})
IN_FLIGHT: Final = (DISPATCHED, RUNNING)

# (status, event) -> next status.
TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (QUEUED, "dispatch"): DISPATCHED,
    (QUEUED, "cancel"): CANCELLED,
    (QUEUED, "fail"): FAILED,  # connector revoked while the job waited
    (QUEUED, "expire"): EXPIRED,
    (DISPATCHED, "start"): RUNNING,
    (DISPATCHED, "succeed"): SUCCEEDED,
    (DISPATCHED, "fail"): FAILED,
    (DISPATCHED, "cancel"): CANCELLED,
    (DISPATCHED, "time_out"): TIMED_OUT,
    (DISPATCHED, "requeue"): QUEUED,
    (DISPATCHED, "retry"): QUEUED,
    (RUNNING, "record_columns"): RUNNING,
    (RUNNING, "succeed"): SUCCEEDED,
    (RUNNING, "fail"): FAILED,
    (RUNNING, "cancel"): CANCELLED,
    (RUNNING, "time_out"): TIMED_OUT,
    (RUNNING, "requeue"): QUEUED,
    (RUNNING, "retry"): QUEUED,
}
EVENTS: Final = frozenset(event for _, event in TRANSITIONS)

# What an agent's job.done.v1 status means as an event.
DONE_EVENTS: Final = {
    SUCCEEDED: "succeed", FAILED: "fail", CANCELLED: "cancel", TIMED_OUT: "time_out",
}  # fmt: skip

LOST_ERROR: Final = {
    "code": "AGENT_LOST",
    "message": "the agent stopped holding the job (it restarted or went silent) too many times",
    "retryable": True,
}


def error_json(code: str, message: str, retryable: bool = False) -> str:
    """A job's ``error`` as stored."""
    return orjson.dumps({"code": code, "message": message, "retryable": retryable}).decode()


class IllegalTransition(Conflict):
    """A job cannot take this step from the status it is in."""

    def __init__(self, job_id: str, status: str, event: str) -> None:
        super().__init__(
            f"job {job_id} is {status}; it cannot {event.replace('_', ' ')}",
            details={"jobId": job_id, "status": status, "event": event},
        )
        self.status_now = status


def next_status(status: str, event: str) -> str | None:
    """The status ``event`` takes ``status`` to, or None when it is not a legal step."""
    return TRANSITIONS.get((status, event))


def step(job_id: str, status: str, event: str) -> str:
    """The status ``event`` takes ``status`` to; ``IllegalTransition`` when it cannot."""
    target = TRANSITIONS.get((status, event))
    if target is None:
        raise IllegalTransition(job_id, status, event)
    return target


def one_step(event: str, statuses: tuple[str, ...]) -> str:
    """The single status ``event`` takes every one of ``statuses`` to (a fast path bets
    on the job being in one of them); ValueError when they do not agree."""
    targets = {TRANSITIONS.get((s, event)) for s in statuses}
    if len(targets) != 1 or None in targets or not 1 <= len(statuses) <= 2:
        raise ValueError(f"{event} from {statuses} is not one step")
    (target,) = targets
    assert target is not None
    return target


# ---------------------------------------------------------------- options

# option (as the API spells it) -> (kind, lo, hi, default, nullable). The one place the
# defaults are written; docs/API and the OpenAPI document describe the same table.
OPTIONS: Final[dict[str, tuple[str, float, float, Any, bool]]] = {
    "timeoutSeconds": ("int", 1, 86_400, 300, False),
    "maxRows": ("int", 1, 1_000_000_000_000, None, True),
    "retryLimit": ("int", 0, 100, 2, False),
    "retryDelaySeconds": ("num", 0, 86_400, 5, False),
    "ttlSeconds": ("int", 1, 30 * 86_400, 14_400, False),
    "priority": ("int", -1000, 1000, 0, False),
}
MAX_JOB_KEY: Final = 200


@dataclass(frozen=True, slots=True)
class JobOptions:
    """A job's options, every one filled in. Made once from the request body (``parse``,
    which validates) and read back from the store (``from_json``, which trusts)."""

    timeout_seconds: int = OPTIONS["timeoutSeconds"][3]
    max_rows: int | None = OPTIONS["maxRows"][3]
    retry_limit: int = OPTIONS["retryLimit"][3]
    retry_delay_seconds: float = OPTIONS["retryDelaySeconds"][3]
    ttl_seconds: int = OPTIONS["ttlSeconds"][3]
    priority: int = OPTIONS["priority"][3]
    job_key: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> JobOptions:
        """Validate a request's ``options`` object; ValidationError names the field."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValidationError("options must be an object", field="options")
        for name in raw:
            if name not in OPTIONS and name != "jobKey":
                raise ValidationError(f"options.{name} is not a known option", field=f"options.{name}")
        out: dict[str, Any] = {}
        for name, (kind, lo, hi, default, nullable) in OPTIONS.items():
            value = raw.get(name, default)
            if value is None:
                if not nullable:
                    raise ValidationError(f"options.{name} must not be null", field=f"options.{name}")
                out[name] = None
                continue
            if not _number(value, kind) or not lo <= value <= hi:
                word = "an integer" if kind == "int" else "a number"
                raise ValidationError(f"options.{name} must be {word} from {lo:.15g} to {hi:.15g}",
                                      field=f"options.{name}")  # fmt: skip
            out[name] = int(value) if kind == "int" else value
        key = raw.get("jobKey")
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= MAX_JOB_KEY or "\x00" in key):
            raise ValidationError(f"options.jobKey must be a string of 1 to {MAX_JOB_KEY} characters "
                                  "without U+0000", field="options.jobKey")  # fmt: skip
        out["jobKey"] = key
        return cls._from_api(out)

    @classmethod
    def from_json(cls, text: str | bytes | None) -> JobOptions:
        """The options as stored (``to_json``); a field a row lacks takes its default."""
        return cls._from_api(orjson.loads(text) if text else {})

    @classmethod
    def _from_api(cls, d: dict[str, Any]) -> JobOptions:
        def get(name: str) -> Any:
            return d.get(name, OPTIONS[name][3])

        return cls(
            timeout_seconds=get("timeoutSeconds"), max_rows=get("maxRows"),
            retry_limit=get("retryLimit"), retry_delay_seconds=get("retryDelaySeconds"),
            ttl_seconds=get("ttlSeconds"), priority=get("priority"), job_key=d.get("jobKey"),
        )

    def as_api(self) -> dict[str, Any]:
        return {
            "timeoutSeconds": self.timeout_seconds, "maxRows": self.max_rows,
            "retryLimit": self.retry_limit, "retryDelaySeconds": self.retry_delay_seconds,
            "ttlSeconds": self.ttl_seconds, "priority": self.priority, "jobKey": self.job_key,
        }  # fmt: skip

    def to_json(self) -> str:
        return orjson.dumps(self.as_api()).decode()

    def for_agent(self) -> dict[str, Any]:
        """The options a job.assign.v1 carries (the rest are the relay's business)."""
        return {"timeoutSeconds": self.timeout_seconds, "maxRows": self.max_rows}


def _number(value: Any, kind: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "num" or isinstance(value, int) or (isinstance(value, float) and value.is_integer())


# ---------------------------------------------------------------- retry and lease policy


def should_retry(attempt: int, limit: int) -> bool:
    """Attempt ``attempt`` ended without a result: is there another? (``retryLimit``
    counts retries after the first attempt, so attempts run at most ``limit + 1`` times.)"""
    return attempt <= limit


def lease_expiry(at: float, lease_seconds: float) -> float:
    """Until when a job dispatched (or an agent heard) at ``at`` stays leased."""
    return at + lease_seconds


def expired(queued_at: float, options: JobOptions, at: float) -> bool:
    """A queued job waited past its ``ttlSeconds``."""
    return queued_at + options.ttl_seconds < at
