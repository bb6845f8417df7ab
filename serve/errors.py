"""Every error the gateway returns, and the one place that turns exceptions into HTTP responses.

Responses always have the shape of :class:`serve.schemas.ErrorResponse`; no traceback ever leaves the
process (it goes to the log instead).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.schemas import ErrorBody, ErrorResponse

log = logging.getLogger("serve")


class ApiError(Exception):
    """An error with a status code and a message meant for the client."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(ApiError):
    status_code, code = 400, "bad_request"


class BadImage(ApiError):
    status_code, code = 400, "bad_image"


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"


class Forbidden(ApiError):
    status_code, code = 403, "forbidden"


class NotFound(ApiError):
    status_code, code = 404, "not_found"


class Conflict(ApiError):
    status_code, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status_code, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status_code, code = 415, "unsupported_media_type"


class MissingField(ApiError):
    """A required form field is absent: 422 like FastAPI's own validation errors, with a useful message."""

    status_code, code = 422, "validation_error"


class TooManyJobs(ApiError):
    status_code, code = 429, "too_many_jobs"

    def __init__(self, message: str, retry_after_s: int = 10) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class BackendError(ApiError):
    status_code, code = 502, "inference_error"


class BackendUnavailable(ApiError):
    status_code, code = 503, "inference_unavailable"

    def __init__(self, message: str) -> None:
        # Retry-After tells well-behaved clients to come back rather than hammer a restarting server.
        super().__init__(message, headers={"Retry-After": "2"})


class Overloaded(ApiError):
    """The gateway's own wait queue is full (not Triton's fault): come back in a moment."""

    status_code, code = 503, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ShuttingDown(ApiError):
    """The gateway is draining (SIGTERM, Ctrl-C): 503, not 429, so clients and balancers go elsewhere."""

    status_code, code = 503, "shutting_down"

    def __init__(self, message: str = "the gateway is shutting down; retry shortly", retry_after_s: int = 2) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s), "Connection": "close"})


class BackendTimeout(ApiError):
    status_code, code = 504, "inference_timeout"


def error_body(code: str, message: str, detail: object = None) -> dict[str, Any]:
    """The JSON of every error response, built as the documented :class:`ErrorResponse` (no ``detail`` key
    unless one is given). Also used by the ASGI guards (serve/security.py) that answer before FastAPI."""
    body = (
        ErrorBody(code=code, message=message)
        if detail is None
        else ErrorBody(code=code, message=message, detail=detail)
    )
    return ErrorResponse(error=body).model_dump(mode="json", exclude_unset=True)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.message)
        return JSONResponse(error_body(exc.code, exc.message), exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # errors() may hold raw bytes or exceptions (ctx); keep only the JSON-safe parts
        detail = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse(error_body("validation_error", "request validation failed", detail), 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal server error (see the gateway log)"), 500)
