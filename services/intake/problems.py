"""One error format for every error of intake's API: RFC 9457 problem details (`application/problem+json`),
with the field errors as an `errors` member. The exception handlers here turn FastAPI's and Starlette's own
errors (404 of a route, 405, validation, a body that is not JSON) into the same shape, and `responses()`
documents each operation's statuses with it."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

PROBLEM_JSON = "application/problem+json"


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. customer.email, or a header's name")
    message: str
    type: str = Field(description="Machine-readable kind, e.g. missing, string_too_long, idempotency_conflict")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field("about:blank", description="A URI naming the kind of problem; about:blank: see the status")
    title: str = Field(description="The status's phrase, e.g. Not Found")
    status: int = Field(description="The HTTP status code")
    detail: str | None = Field(None, description="What went wrong with this request")
    errors: list[FieldError] = Field(default_factory=list, description="Field errors (422), one per field")


# What each status means in this API, for the OpenAPI document.
MEANING = {
    400: "The body is not JSON",
    401: "Missing or invalid X-API-Key (or X-Signature)",
    404: "Not found",
    405: "Method not allowed (the Allow header lists the methods of the path)",
    409: "The request cannot be withdrawn in its state",
    422: "Invalid input: `errors` names each field",
    503: "The service cannot do this as configured",
}


def responses(*statuses: int, **meanings: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of an operation: each status with the problem schema; `meanings` by `s409=...`."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description = meanings.get(f"s{status}", MEANING[status])
        out[status] = {"description": description, "model": Problem, "content": {PROBLEM_JSON: {}}}
    return out


def problem(status: int, detail: str | None = None, *, errors: list[FieldError] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, errors=errors or [])
    return JSONResponse(body.model_dump(mode="json"), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def field_errors(errors: list[dict], drop_first: set[str] = frozenset({"body", "header", "path", "query"})
                 ) -> list[FieldError]:
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in drop_first:
            loc = loc[1:]
        out.append(FieldError(field=".".join(loc) or "body", message=err.get("msg", "invalid"),
                              type=err.get("type", "value_error")))
    return out


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of this path answers (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem(400, "the body is not JSON: " + "; ".join(str(e.get("msg")) for e in errors))
        return problem(422, "invalid input", errors=field_errors(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request))
        detail = exc.detail if isinstance(exc.detail, str) else None
        if detail == HTTPStatus(exc.status_code).phrase:
            detail = None
        return problem(exc.status_code, detail, headers=headers)


def problem_openapi(app: FastAPI) -> None:
    """Document every error response as `application/problem+json` (FastAPI puts a response model's schema
    under application/json; this moves it, so the document says what the API answers)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if str(status).startswith("4") and PROBLEM_JSON in content and "application/json" in content:
                        content[PROBLEM_JSON] = content.pop("application/json")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
