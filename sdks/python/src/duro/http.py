"""Durable HTTP (``CallHttp``) for the Durable Task Python SDK.

Duro runs durable HTTP requests as the built-in activity ``BuiltIn::HttpActivity``: the
sidecar sends the request, follows the asynchronous 202 + ``Location`` pattern itself and
returns the final response. The orchestration therefore never sees a 202 when
``asynchronous_pattern_enabled`` is true (the default).

The request and response use Durable Functions' camelCase JSON
(``{"method", "uri", "headers", "content", "tokenSource", "asynchronousPatternEnabled", "timeout"}``
and ``{"statusCode", "headers", "content"}``).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from durabletask import task

HTTP_ACTIVITY_NAME = "BuiltIn::HttpActivity"
"""Name of the built-in activity that performs durable HTTP requests in the sidecar."""

_SCOPE_REWRITES = {
    "https://management.core.windows.net": "https://management.core.windows.net/.default",
    "https://management.core.windows.net/": "https://management.core.windows.net/.default",
    "https://graph.microsoft.com": "https://graph.microsoft.com/.default",
    "https://graph.microsoft.com/": "https://graph.microsoft.com/.default",
}


@dataclass(frozen=True)
class ManagedIdentityTokenSource:
    """A bearer token the sidecar acquires from a managed identity at execution time.

    The token is never stored in orchestration history; only this descriptor is.

    Attributes:
        resource: The resource or v2 scope, e.g. ``https://management.core.windows.net/.default``.
            Bare management and Graph resources are rewritten to their ``/.default`` scope.
        tenant_id: Optional tenant for Entra ID token endpoint flows.
        authority_host: Optional authority host, e.g. ``https://login.microsoftonline.com``.
    """

    resource: str
    tenant_id: str | None = None
    authority_host: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Returns the Durable Functions JSON form (``kind``, ``resource``, ``options``)."""
        out: dict[str, Any] = {
            "kind": "AzureManagedIdentity",
            "resource": _SCOPE_REWRITES.get(self.resource, self.resource),
        }
        options: dict[str, str] = {}
        if self.tenant_id is not None:
            options["tenantid"] = self.tenant_id
        if self.authority_host is not None:
            options["authorityhost"] = self.authority_host
        if options:
            out["options"] = options
        return out


def _timespan(value: timedelta) -> str:
    """Formats a timedelta as a .NET TimeSpan string (``[d.]hh:mm:ss[.fffffff]``)."""
    total_us = int(round(value.total_seconds() * 1_000_000))
    if total_us <= 0:
        raise ValueError("timeout must be greater than zero")
    days, rem = divmod(total_us, 86_400_000_000)
    hours, rem = divmod(rem, 3_600_000_000)
    minutes, rem = divmod(rem, 60_000_000)
    seconds, micros = divmod(rem, 1_000_000)
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    if days:
        text = f"{days}.{text}"
    if micros:
        text += f".{micros * 10:07d}"
    return text


@dataclass
class DurableHttpRequest:
    """A durable HTTP request (Durable Functions' ``DurableHttpRequest``).

    Attributes:
        method: HTTP method name (``GET``, ``POST``, ...).
        uri: Absolute http(s) URL.
        headers: Header name to a value or a list of values.
        content: Request body text, or None.
        token_source: Optional managed-identity token source; the sidecar adds
            ``Authorization: Bearer <token>`` at send time.
        asynchronous_pattern_enabled: Follow 202 + ``Location`` polling in the sidecar.
        timeout: Timeout of each HTTP attempt (initial request and every poll).
    """

    method: str
    uri: str
    headers: dict[str, str | list[str]] = field(default_factory=dict)
    content: str | None = None
    token_source: ManagedIdentityTokenSource | None = None
    asynchronous_pattern_enabled: bool = True
    timeout: timedelta | None = None

    def to_json(self) -> dict[str, Any]:
        """Returns the camelCase JSON object the sidecar's ``BuiltIn::HttpActivity`` parses."""
        return {
            "method": self.method.upper(),
            "uri": self.uri,
            "headers": dict(self.headers),
            "content": self.content,
            "tokenSource": self.token_source.to_json() if self.token_source else None,
            "asynchronousPatternEnabled": self.asynchronous_pattern_enabled,
            "timeout": _timespan(self.timeout) if self.timeout is not None else None,
        }


@dataclass
class DurableHttpResponse:
    """The final response of a durable HTTP request.

    Attributes:
        status_code: HTTP status code.
        headers: Header name (as sent by the sidecar, lower-case) to a value or a list of values.
        content: Response body as text, or None for an empty body.
    """

    status_code: int
    headers: dict[str, str | list[str]] = field(default_factory=dict)
    content: str | None = None

    @classmethod
    def from_json(cls, value: Any) -> DurableHttpResponse:
        """Builds a response from the activity output (a dict or its JSON text)."""
        if isinstance(value, (str, bytes)):
            value = json.loads(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a DurableHttpResponse object, got {type(value).__name__}")
        lowered = {str(k).lower(): v for k, v in value.items()}
        return cls(
            status_code=int(lowered.get("statuscode", 0)),
            headers=dict(lowered.get("headers") or {}),
            content=lowered.get("content"),
        )

    def header(self, name: str) -> str | None:
        """Returns the first value of a header (case-insensitive), or None."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                if isinstance(value, list):
                    return value[0] if value else None
                return value
        return None

    def json(self) -> Any:
        """Parses the content as JSON (None for an empty body)."""
        return json.loads(self.content) if self.content else None


def call_http_task(
    ctx: task.OrchestrationContext,
    request: DurableHttpRequest,
    *,
    retry_policy: task.RetryPolicy | None = None,
) -> task.Task[Any]:
    """Schedules the durable HTTP activity and returns the raw task (its result is a dict).

    Use this with ``task.when_all``/``when_any``, then convert each result with
    :meth:`DurableHttpResponse.from_json`. For a single call prefer :func:`call_http`.
    """
    return ctx.call_activity(HTTP_ACTIVITY_NAME, input=request.to_json(), retry_policy=retry_policy)


def call_http(
    ctx: task.OrchestrationContext,
    request: DurableHttpRequest,
    *,
    retry_policy: task.RetryPolicy | None = None,
) -> Generator[task.Task[Any], Any, DurableHttpResponse]:
    """Makes a durable HTTP request from an orchestrator; use with ``yield from``.

    Example::

        def orchestrator(ctx, _):
            resp = yield from duro.call_http(ctx, duro.DurableHttpRequest("GET", url))
            return resp.status_code

    Failures (invalid request, blocked address, timeout, ...) raise ``task.TaskFailedError``
    whose ``details.error_type`` is one of Duro's ``DuroHttp*`` error types.
    """
    result = yield call_http_task(ctx, request, retry_policy=retry_policy)
    return DurableHttpResponse.from_json(result)
