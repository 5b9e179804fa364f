"""The route class of every API route: FastAPI's request handling, resolved once per route.

FastAPI's request handler re-derives, on every request, what a route needs: it walks the
dependency tree (creating a sub-response and a cache per level), builds the query, header
and cookie maps even for a route that declares none, parses the Content-Type header with
``email.message`` and looks up the endpoint's source location for error messages. For the
routes whose dependencies are plain ``async def dep(request)`` functions, :class:`OrjsonRoute`
works that out once, when the route is built, and then runs the same steps in the same
order with FastAPI's own functions:

1. the body is read and parsed (orjson: strict UTF-8, no lone surrogates, bounded depth);
2. the dependencies run, in declaration order (authentication, the rate limit);
3. path, query, header and cookie parameters, then the body, are validated by FastAPI's
   ``request_params_to_args`` and ``request_body_to_args`` (the same validators, the same
   errors, raised as the same ``RequestValidationError``);
4. the endpoint runs, and a non-``Response`` result is serialised as FastAPI would.

Anything outside that shape (a body that is not ``application/json`` or not valid JSON,
dependency overrides, yield dependencies, security scopes, a route's ``Response``
parameter) is handed to FastAPI's own handler untouched, so every route keeps exactly one
behaviour.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

RouteHandler = Callable[[Request], Coroutine[Any, Any, Response]]
_JSON = "application/json"

try:  # FastAPI's own building blocks of its request handler
    from fastapi._compat import ModelField
    from fastapi.datastructures import DefaultPlaceholder
    from fastapi.dependencies.models import Dependant
    from fastapi.dependencies.utils import request_body_to_args, request_params_to_args
    from fastapi.exceptions import RequestValidationError
    from fastapi.routing import serialize_response
    from fastapi.utils import is_body_allowed_for_status_code
    from pydantic_core import PydanticUndefined as Undefined

    _PLANNABLE = True
except ImportError:  # pragma: no cover - another FastAPI: its handler is used as it is
    _PLANNABLE = False


class OrjsonRequest(Request):
    """Parses JSON with orjson: strict UTF-8, no lone surrogates, bounded nesting depth.

    Its errors subclass ``json.JSONDecodeError``, which FastAPI reports as invalid JSON.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one route's requests need, worked out when the route is built."""

    dependencies: tuple[tuple[str | None, Callable[[Request], Any]], ...]
    path_params: Sequence[ModelField]
    query_params: Sequence[ModelField]
    header_params: Sequence[ModelField]
    cookie_params: Sequence[ModelField]
    body_params: list[ModelField]
    embed_body_fields: bool
    request_param_name: str | None
    endpoint: Callable[..., Coroutine[Any, Any, Any]]


def _plain_dependency(sub: Dependant) -> bool:
    """An ``async def dep(request: Request)`` without sub-dependencies, scopes or yield."""
    return (
        sub.call is not None
        and inspect.iscoroutinefunction(sub.call)
        and not sub.dependencies
        and not (sub.path_params or sub.query_params or sub.header_params)
        and not (sub.cookie_params or sub.body_params)
        and sub.request_param_name is not None
        and not (sub.websocket_param_name or sub.http_connection_param_name)
        and not (sub.response_param_name or sub.background_tasks_param_name)
        and not sub.security_scopes_param_name
        and not sub.own_oauth_scopes
        and not sub.parent_oauth_scopes
        and sub.concurrency is None
    )


def _plan(route: Any) -> _Plan | None:
    """The route's plan, or None when FastAPI's own handler must run its requests."""
    if not _PLANNABLE:
        return None
    d: Dependant = route.dependant
    calls = [sub.call for sub in d.dependencies]
    body_field = route.body_field
    if (
        d.call is None
        or not inspect.iscoroutinefunction(d.call)
        or not all(_plain_dependency(sub) for sub in d.dependencies)
        or len(set(map(id, calls))) != len(calls)  # a shared dependency: FastAPI caches it
        or d.websocket_param_name
        or d.http_connection_param_name
        or d.response_param_name
        or d.background_tasks_param_name
        or d.security_scopes_param_name
        or (body_field is not None and type(body_field.field_info).__name__ != "Body")
        or getattr(route, "stream_item_field", None) is not None
        or getattr(route, "is_json_stream", False)
        or not isinstance(route.response_class, DefaultPlaceholder)
    ):
        return None
    return _Plan(
        dependencies=tuple((sub.name, sub.call) for sub in d.dependencies),  # type: ignore[misc]
        path_params=d.path_params,
        query_params=d.query_params,
        header_params=d.header_params,
        cookie_params=d.cookie_params,
        body_params=d.body_params,
        embed_body_fields=route._embed_body_fields,
        request_param_name=d.request_param_name,
        endpoint=d.call,
    )


class OrjsonRoute(APIRoute):
    """An API route whose requests are run by a plan made once (see the module's doc)."""

    def get_route_handler(self) -> RouteHandler:
        standard = super().get_route_handler()
        plan = _plan(self._effective())
        if plan is None:

            async def fastapi_route(request: Request) -> Response:
                return await standard(OrjsonRequest(request.scope, request.receive))

            return fastapi_route
        return _planned_handler(self._effective(), plan, standard)

    def _effective(self) -> Any:
        """The route as included (its prefix and router settings), as FastAPI's handler
        sees it."""
        try:
            from fastapi.routing import _effective_route_context_var
        except ImportError:  # pragma: no cover - FastAPI copies included routes instead
            return self
        context = _effective_route_context_var.get()
        if context is not None and context.original_route is self:
            return context
        return self


def _planned_handler(route: Any, plan: _Plan, standard: RouteHandler) -> RouteHandler:
    overrides = route.dependency_overrides_provider
    response_field = route.response_field
    status_code: int | None = route.status_code
    body_params = plan.body_params
    has_body = route.body_field is not None
    embed = plan.embed_body_fields
    sources: tuple[tuple[Sequence[ModelField], Callable[[Request], Any]], ...] = (
        (plan.path_params, lambda r: r.path_params),
        (plan.query_params, lambda r: r.query_params),
        (plan.header_params, lambda r: r.headers),
        (plan.cookie_params, lambda r: r.cookies),
    )
    params = tuple((fields, get) for fields, get in sources if fields)

    async def planned_route(request: Request) -> Response:
        request = OrjsonRequest(request.scope, request.receive)
        if overrides is not None and getattr(overrides, "dependency_overrides", None):
            return await standard(request)
        body: Any = Undefined
        if has_body:
            try:
                raw = await request.body()
            except Exception:  # a client gone mid-body: FastAPI's answer
                return await standard(request)
            if raw:
                # Only the plain case here; FastAPI itself judges any other media type and
                # reports invalid JSON.
                content_type = request.headers.get("content-type")
                if content_type != _JSON:
                    return await standard(request)
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return await standard(request)
                request._json = body
        values: dict[str, Any] = {}
        for name, dependency in plan.dependencies:
            solved = await dependency(request)
            if name is not None:
                values[name] = solved
        errors: list[Any] = []
        for fields, get in params:
            found, failed = request_params_to_args(fields, get(request))
            values.update(found)
            errors += failed
        if body_params:
            found, failed = await request_body_to_args(
                body_fields=body_params, received_body=body, embed_body_fields=embed
            )
            values.update(found)
            errors.extend(failed)
        if errors:
            raise RequestValidationError(errors, body=None if body is Undefined else body)
        if plan.request_param_name:
            values[plan.request_param_name] = request
        result = await plan.endpoint(**values)
        if isinstance(result, Response):
            return result
        content = await serialize_response(
            field=response_field,
            response_content=result,
            include=route.response_model_include,
            exclude=route.response_model_exclude,
            by_alias=route.response_model_by_alias,
            exclude_unset=route.response_model_exclude_unset,
            exclude_defaults=route.response_model_exclude_defaults,
            exclude_none=route.response_model_exclude_none,
            dump_json=response_field is not None,
        )
        response_class = Response if response_field is not None else route.response_class.value
        response: Response = response_class(
            content, status_code=status_code or 200, media_type=_JSON
        )
        if not is_body_allowed_for_status_code(response.status_code):
            response.body = b""
        return response

    return planned_route
