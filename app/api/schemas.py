"""Response shapes for the OpenAPI document (responses themselves are built in views)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

# An optional field is omitted when it does not apply, never sent as null: the document
# says "not required, not nullable" (``SkipJsonSchema[None]`` hides the Python default).
Omit = SkipJsonSchema[None]
Percent = Annotated[int, Field(ge=0, le=100)]
Counter = Annotated[int, Field(ge=0)]


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ParentRef(_Out):
    parentJobId: str
    childIndex: Counter


class ChildCountsOut(_Out):
    total: Counter
    completed: Counter
    failed: Counter
    running: Counter
    pending: Counter
    cancelled: Counter


class JobOut(_Out):
    id: str
    appId: str
    userId: str
    jobType: str
    title: str
    status: Literal["pending", "running", "completed", "failed", "cancelled"]
    progress: Percent
    workflowId: str | Omit = None
    message: str | Omit = None
    queue: dict[str, Any] | Omit = None
    stage: dict[str, Any] | Omit = None
    result: dict[str, Any] | Omit = None
    error: dict[str, Any] | Omit = None
    metadata: dict[str, Any] | Omit = None
    retryable: bool | Omit = None
    estimatedCompletionAt: str | Omit = None
    etaConfidence: float | Omit = Field(
        None,
        description="Probability (0-1) that the estimate lands within ±20 % of the true"
        " remaining time, measured on the key's recent jobs; only on estimates from history",
    )
    etaBasedOn: int | Omit = None
    createdAt: str
    updatedAt: str
    startedAt: str | Omit = None
    completedAt: str | Omit = None
    expiresAt: str
    parent: ParentRef | Omit = None
    children: ChildCountsOut | Omit = None
    childProgressMode: Literal["average", "sequential", "weighted"] | Omit = None


class JobListOut(_Out):
    jobs: list[JobOut]
    nextCursor: str | Omit = None


class TokenOut(_Out):
    token: str
    tokenType: Literal["Bearer"]
    userId: str
    jobIds: list[str] | Omit = None
    expiresIn: int = Field(ge=1)
    expiresAt: str


class ChildSummaryOut(_Out):
    id: str
    childIndex: Counter
    title: str
    status: Literal["pending", "running", "completed", "failed", "cancelled"]
    progress: Percent
    message: str | Omit = None
    result: dict[str, Any] | Omit = None
    error: dict[str, Any] | Omit = None
    createdAt: str
    updatedAt: str
    completedAt: str | Omit = None


class WithChildrenOut(_Out):
    parent: JobOut
    children: list[ChildSummaryOut]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | Omit = None


class ErrorOut(BaseModel):
    error: ErrorBody


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _err("Invalid input or job state"),
    401: _err("Missing or invalid API key or token"),
    403: _err("Write with a public key or token; read with a public key of a token-only app"),
    404: _err("Not found"),
    409: _err("Conflict"),
    413: _err("Request body too large"),
    429: _err("Rate limited"),
    503: _err("Database unavailable"),
}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document as the server really behaves.

    FastAPI documents a 422 on every operation, but request validation errors are answered
    400 with the envelope, so the 422s (and their schemas) are removed; every operation
    under ``/v1`` needs the Bearer key; 429 and 503 carry ``Retry-After``.
    """
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    doc.setdefault("components", {})["securitySchemes"] = {
        "bearerKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: sk_ (read and write) or pk_ (read only)",
        }
    }
    from app.api import idempotency, ratelimit  # they import this module's shapes

    for path, path_item in doc.get("paths", {}).items():
        for method, operation in path_item.items():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            if not path.startswith("/v1/"):
                continue
            operation["security"] = [{"bearerKey": []}]
            for status, response in responses.items():
                headers = response.setdefault("headers", {})
                if status != "401":  # the limit is per key: a request without one has none
                    headers.update(ratelimit.OPENAPI_HEADERS)
                if status in ("429", "503"):
                    headers.update(_RETRY_AFTER)
                if method == "post" and status.startswith("2"):
                    headers.update(idempotency.OPENAPI_REPLAYED_HEADER)
            if method == "post":
                operation.setdefault("parameters", []).append(idempotency.OPENAPI_PARAMETER)
    schemas = doc["components"].get("schemas", {})
    for name in _UNUSED_SCHEMAS:
        schemas.pop(name, None)
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`openapi_document` at ``/openapi.json`` (built once, on first request)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app)
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


SWAGGER_DIR = Path(__file__).resolve().parent.parent / "static" / "swagger-ui"


def install_swagger_ui(app: FastAPI) -> None:
    """Interactive docs at ``/docs`` from vendored swagger-ui-dist (no CDN: works offline)."""
    base = "/static/swagger-ui"
    app.mount(base, StaticFiles(directory=SWAGGER_DIR), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{base}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}/swagger-ui.css",
            swagger_favicon_url=f"{base}/favicon-32x32.png",
            oauth2_redirect_url=None,
        )
