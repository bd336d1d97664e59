"""One error hierarchy for the whole product.

Every failure a user can meet is an ``MCError`` with a stable ``code`` (the contract's
names), a sentence, optional ``details`` and whether retrying may help. The relay maps
codes to HTTP statuses in one place (``HTTP_STATUS`` below); the agent reports job errors
with the same codes. Third-party exceptions are translated into these at the edge where
they arise.
"""

from __future__ import annotations

from typing import Any

# code -> (HTTP status, retryable by default)
_CODES: dict[str, tuple[int, bool]] = {
    # API errors
    "BAD_REQUEST": (400, False),
    "UNAUTHORIZED": (401, False),
    "FORBIDDEN": (403, False),
    "NOT_FOUND": (404, False),
    "CONFLICT": (409, False),
    "GONE": (410, False),
    "PAYLOAD_TOO_LARGE": (413, False),
    "UNSUPPORTED_MEDIA_TYPE": (415, False),
    "VALIDATION_ERROR": (422, False),
    "RATE_LIMITED": (429, True),
    "INTERNAL_ERROR": (500, True),
    "SERVICE_UNAVAILABLE": (503, True),
    "JOB_ALREADY_FINISHED": (409, False),
    "CONNECTOR_PENDING": (409, False),
    # job errors (reported by agents, stored on jobs; 409 when surfaced over HTTP)
    "SOURCE_NOT_FOUND": (409, False),
    "SOURCE_UNAVAILABLE": (409, True),
    "AUTH_FAILED": (409, False),
    "QUERY_FAILED": (409, False),
    "WRITE_OPERATION_REJECTED": (409, False),
    "SCHEMA_ACCESS_DENIED": (409, False),
    "TIMEOUT": (409, True),
    "CANCELLED": (409, False),
    "CONNECTOR_REVOKED": (409, False),
    "AGENT_SHUTDOWN": (409, True),
    "AGENT_LOST": (409, True),  # the agent lost the job (lease lapsed) more than retryLimit times
    "EXPIRED": (409, False),
    "DECRYPTION_FAILED": (409, False),
    "RESULT_TOO_LARGE": (409, False),
    "RESULT_REJECTED": (409, False),  # the relay refused the agent's rows (not N JSON rows)
    "UNSUPPORTED_OPERATION": (409, False),
    # agent <-> relay protocol
    "PROTOCOL_ERROR": (400, False),
    "DUPLICATE_CONNECTION": (409, True),
}

HTTP_STATUS: dict[str, int] = {code: status for code, (status, _) in _CODES.items()}
JOB_ERROR_CODES = frozenset(
    c for c, (s, _) in _CODES.items() if s == 409 and c not in {"CONFLICT", "JOB_ALREADY_FINISHED"}
)


def default_retryable(code: str) -> bool:
    return _CODES.get(code, (500, False))[1]


class MCError(Exception):
    """Base of every error we raise on purpose."""

    code = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details or {}
        self.retryable = default_retryable(self.code) if retryable is None else retryable

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def to_dict(self) -> dict[str, Any]:
        """The job-error form: ``{"code", "message", "retryable"}``."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message})"


class BadRequest(MCError):
    code = "BAD_REQUEST"


class ValidationError(MCError):
    code = "VALIDATION_ERROR"

    def __init__(self, message: str, *, field: str | None = None, **kw: Any) -> None:
        details = kw.pop("details", None) or {}
        if field is not None:
            details.setdefault("field", field)
        super().__init__(message, details=details, **kw)


class Unauthorized(MCError):
    code = "UNAUTHORIZED"


class Forbidden(MCError):
    code = "FORBIDDEN"


class NotFound(MCError):
    code = "NOT_FOUND"


class Conflict(MCError):
    code = "CONFLICT"


class Gone(MCError):
    code = "GONE"


class PayloadTooLarge(MCError):
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(MCError):
    """A request body in a media type, charset or content coding the relay does not read."""

    code = "UNSUPPORTED_MEDIA_TYPE"


class RateLimited(MCError):
    code = "RATE_LIMITED"


class ProtocolError(MCError):
    """A malformed, oversized, unknown or out-of-order agent/relay message."""

    code = "PROTOCOL_ERROR"


class JobError(MCError):
    """A failure of one job, reported with one of the contract's job error codes."""

    def __init__(self, code: str, message: str, *, retryable: bool | None = None, **kw: Any):
        super().__init__(message, code=code, retryable=retryable, **kw)


class KeyFormatError(MCError):
    """An API key that is not of our form or whose checksum does not match."""

    code = "UNAUTHORIZED"


class DecryptionFailed(JobError):
    def __init__(self, message: str = "the job could not be opened with this agent's key"):
        super().__init__("DECRYPTION_FAILED", message)
