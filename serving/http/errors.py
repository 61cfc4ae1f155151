"""Errors at the HTTP edge: one mapping from error codes to statuses, in OpenAI's shape so
that clients (the `openai` package) raise the right exception."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from switchboard_lora.registry.db import unusable
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.serving.http.schemas import FieldError

log = logging.getLogger(__name__)

# One mapping from error codes to HTTP statuses, here at the edge.
STATUS = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.INTEGRITY: 422,
    ErrorCode.UNLOADABLE: 422,
    ErrorCode.CAPACITY: 429,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.SCHEMA: 503,
    ErrorCode.DATABASE: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.BAD_UPSTREAM: 502,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
}
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


def error_body(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape, so clients (the `openai` package) raise the right error."""
    return JSONResponse(_error(status, message, code, param), status_code=status)


def _error(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_event(exc: Exception) -> dict[str, Any]:
    """An error met after a stream began, as the event that ends it."""
    if isinstance(exc, SwitchboardError):
        status, message, code = STATUS.get(exc.code, 400), exc.message, exc.code.value
    else:
        log.error("error in a stream", exc_info=exc)
        status, message, code = 500, "the server had an internal error", "internal_error"
    return _error(status, message, code)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SwitchboardError)
    async def switchboard_error(_: Request, exc: SwitchboardError) -> JSONResponse:
        return error_body(STATUS.get(exc.code, 400), exc.message, exc.code.value)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = dict(exc.errors()[0]) if exc.errors() else {}
        context: dict[str, Any] = first.get("ctx") or {}
        if first.get("type") == "json_invalid":  # its loc is a character position
            message = f"the body is not valid JSON ({context.get('error', '?')})"
            return error_body(400, message, "invalid_json")
        cause = context.get("error")
        if isinstance(cause, FieldError):
            return error_body(400, str(cause), cause.code, cause.field)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return error_body(
            400,
            f"{where}: {message}" if where else message,
            "invalid_input",
            where or None,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's own refusals (unknown path, wrong method, unparseable body)."""
        if exc.status_code == 404:
            message = f"unknown request URL: {request.method} {request.url.path}"
            return error_body(404, message, "unknown_url")
        code = "method_not_allowed" if exc.status_code == 405 else "invalid_request"
        return error_body(exc.status_code, str(exc.detail), code)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        """The registry database failed under a request: the server's trouble, said once."""
        service = getattr(request.app.state, "service", None)
        failure = unusable(service.registry.database_url if service else "?", exc)
        log.error("%s", failure.message)
        return error_body(503, failure.message, failure.code.value)

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        """A bug, not the client's doing: logged with its traceback, answered in shape."""
        log.error("unhandled error", exc_info=exc)
        return error_body(500, "the server had an internal error", "internal_error")
