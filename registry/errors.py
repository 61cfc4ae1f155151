"""One error type for the whole project, with codes that the CLI and HTTP layer map once."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    INVALID_NAME = "invalid_name"
    INVALID_REF = "invalid_ref"
    INVALID_ADAPTER = "invalid_adapter"
    UNLOADABLE = "unloadable_adapter"  # a stored version no engine can load
    INVALID_MANIFEST = "invalid_manifest"
    INCOMPATIBLE_BASE = "incompatible_base"
    INTEGRITY = "integrity_failure"
    CONFLICT = "conflict"
    CAPACITY = "capacity"
    UNAVAILABLE = "unavailable"  # nothing can serve it now (a gateway's upstreams are down)
    BAD_UPSTREAM = "bad_upstream"  # a gateway's upstream answered what is not an answer
    UPSTREAM_TIMEOUT = "upstream_timeout"  # a gateway's upstream went silent
    INVALID_INPUT = "invalid_input"
    INTERRUPTED = "interrupted"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    SCHEMA = "schema_out_of_date"
    DATABASE = "database_unusable"  # the registry database is damaged or cannot be reached


class SwitchboardError(Exception):
    """An error a user can act on: `code` says what kind, the message says what exactly."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def not_found(message: str) -> SwitchboardError:
    return SwitchboardError(ErrorCode.NOT_FOUND, message)
