"""One error shape for every 4xx/5xx answer of the service:

    {"error": {"code": "invalid_request", "message": "...", "field": "window[3]",
               "errors": [{"field": "window[3]", "message": "..."}, ...]}}

`code` is machine-readable (the table in docs/reliability.md), `field` names the
offending request field (`window[3]`, `dtype`, `body` for an unreadable body) or
is null, and `errors` lists every field error (422 can have several; the first
is repeated in `field`/`message`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# HTTP status -> the code of errors raised as plain HTTPExceptions (routing, FastAPI itself).
DEFAULT_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 408: "request_timeout", 409: "conflict", 413: "body_too_large",
                 415: "unsupported_media_type", 422: "invalid_request", 429: "rate_limited",
                 500: "internal_error", 501: "not_implemented", 503: "unavailable", 504: "timeout"}


class APIError(Exception):
    """Raised by handlers: becomes an error answer of the one shape."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})


def error_body(code: str, message: str, field: str | None = None,
               errors: list[dict[str, str | None]] | None = None) -> dict:
    if errors is None:
        errors = [{"field": field, "message": message}] if field is not None else []
    return {"error": {"code": code, "message": message, "field": field, "errors": errors}}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: Mapping[str, str] | None = None,
                   errors: list[dict[str, str | None]] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, field, errors), status_code=status, headers=headers)


def field_name(loc: Iterable[str | int], root: str | None = "body") -> str | None:
    """A pydantic location -> the name a client recognises: ("window", 3) -> "window[3]"."""
    name = ""
    for part in loc:
        if part == "body" and not name:  # FastAPI prefixes body fields with "body"
            continue
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or root


def validation_response(errors: list[dict], root: str | None = "body") -> JSONResponse:
    """pydantic's error list -> a 422 of the one shape (`root` names errors about the whole body)."""
    fields = [{"field": field_name(e.get("loc", ()), root), "message": e.get("msg", "invalid")} for e in errors]
    if not fields:
        fields = [{"field": root, "message": "invalid request"}]
    code = "invalid_json" if errors and errors[0].get("type") == "json_invalid" else "invalid_request"
    return error_response(422, code, fields[0]["message"], fields[0]["field"], errors=fields)


def install_handlers(app: FastAPI) -> None:
    """Every error, including routing's 404/405 and FastAPI's own validation, gets the one shape."""

    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)

    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, DEFAULT_CODES.get(exc.status_code, "error"), message,
                              headers=getattr(exc, "headers", None))

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(list(exc.errors()))

    async def unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after answering, so uvicorn still logs the traceback.
        return error_response(500, "internal_error", "internal error")

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
