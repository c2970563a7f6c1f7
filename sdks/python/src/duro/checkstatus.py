"""Check-status responses for web frameworks (Durable Functions' ``CreateCheckStatusResponse``).

The helpers return a framework-neutral :class:`CheckStatusResponse` (status, headers, JSON
body); adapt it to Flask, FastAPI, Django, ... with :meth:`CheckStatusResponse.body_bytes`.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .webhooks import BASE_PATH, DuroWebhookClient


@dataclass
class CheckStatusResponse:
    """A ``202 Accepted`` response telling an HTTP client where to poll.

    Attributes:
        status: HTTP status (202).
        headers: ``Location`` (the status URL), ``Retry-After`` and ``Content-Type``.
        body: The JSON payload (management links or signed links).
    """

    status: int
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)

    def body_bytes(self) -> bytes:
        """The body serialized as UTF-8 JSON."""
        return json.dumps(self.body).encode("utf-8")


def create_http_management_payload(
    base_url: str,
    instance_id: str,
    *,
    system_key: str | None = None,
    return_internal_server_error_on_failure: bool = False,
) -> dict[str, Any]:
    """Builds the management links of an instance, in the same shape Duro answers on start.

    Args:
        base_url: Public root URL of Duro's HTTP listener (``http://host:port``).
        instance_id: The orchestration instance id.
        system_key: When given, every link carries ``code=<key>``: only hand such links to
            trusted callers; use :func:`create_signed_link_response` for end clients.
        return_internal_server_error_on_failure: Status link answers 500 when the instance failed.

    ``{eventName}`` and ``{text}`` are literal placeholders, as in Durable Functions.
    """
    base = base_url.rstrip("/")
    if not base.endswith(BASE_PATH):
        base += BASE_PATH
    inst = f"{base}/instances/{urllib.parse.quote(instance_id, safe='')}"
    code = f"code={urllib.parse.quote(system_key, safe='')}" if system_key else None

    def q(*parts: str | None) -> str:
        present = [p for p in parts if p]
        return "?" + "&".join(present) if present else ""

    fail = "returnInternalServerErrorOnFailure=true" if return_internal_server_error_on_failure else None
    reason = "reason={text}"
    return {
        "id": instance_id,
        "statusQueryGetUri": f"{inst}{q(code, fail)}",
        "sendEventPostUri": f"{inst}/raiseEvent/{{eventName}}{q(code)}",
        "terminatePostUri": f"{inst}/terminate{q(reason, code)}",
        "purgeHistoryDeleteUri": f"{inst}{q(code)}",
        "restartPostUri": f"{inst}/restart{q(code)}",
        "suspendPostUri": f"{inst}/suspend{q(reason, code)}",
        "resumePostUri": f"{inst}/resume{q(reason, code)}",
    }


def create_check_status_response(
    base_url: str,
    instance_id: str,
    *,
    system_key: str | None = None,
    return_internal_server_error_on_failure: bool = False,
) -> CheckStatusResponse:
    """Builds a 202 check-status response with the management links (``Retry-After: 10``)."""
    body = create_http_management_payload(
        base_url, instance_id, system_key=system_key,
        return_internal_server_error_on_failure=return_internal_server_error_on_failure,
    )
    return _accepted(body)


def create_signed_link_response(
    client: DuroWebhookClient,
    instance_id: str,
    *,
    ops: str = "status",
    ttl_seconds: int | None = None,
) -> CheckStatusResponse:
    """Asks Duro for signed per-instance links and wraps them in a 202 response.

    Signed links carry no management key, so they are safe to return to end clients.
    """
    return _accepted(client.signed_links(instance_id, ops=ops, ttl_seconds=ttl_seconds))


def _accepted(body: dict[str, Any]) -> CheckStatusResponse:
    return CheckStatusResponse(
        status=202,
        headers={
            "Location": body["statusQueryGetUri"],
            "Retry-After": "10",
            "Content-Type": "application/json; charset=utf-8",
        },
        body=body,
    )
