"""A small client for Duro's HTTP management API (``/runtime/webhooks/durabletask``).

Standard library only (``urllib``). Non-2xx answers raise :class:`WebhookError`, except
where a status code is part of the answer (``get_status`` returns None for 404).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BASE_PATH = "/runtime/webhooks/durabletask"
"""Path of the management API below the server's root URL."""


class WebhookError(Exception):
    """A non-success answer from the management API.

    Attributes:
        status: HTTP status code.
        body: Response body text (may be empty).
    """

    def __init__(self, status: int, body: str, url: str):
        super().__init__(f"HTTP {status} from {url}: {body[:500]}")
        self.status = status
        self.body = body
        self.url = url


@dataclass
class WebhookResponse:
    """A raw answer of the management API."""

    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        """Parses the body as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


@dataclass
class InstanceStatus:
    """The status object of an orchestration instance (Durable Functions' shape).

    ``raw`` holds the full JSON object, including ``historyEvents`` when requested.
    """

    name: str
    instance_id: str
    runtime_status: str
    input: Any = None
    custom_status: Any = None
    output: Any = None
    created_time: str | None = None
    last_updated_time: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> InstanceStatus:
        """Builds a status from the API's camelCase JSON object."""
        return cls(
            name=obj.get("name", ""),
            instance_id=obj.get("instanceId", ""),
            runtime_status=obj.get("runtimeStatus", ""),
            input=obj.get("input"),
            custom_status=obj.get("customStatus"),
            output=obj.get("output"),
            created_time=obj.get("createdTime"),
            last_updated_time=obj.get("lastUpdatedTime"),
            raw=dict(obj),
        )

    @property
    def is_terminal(self) -> bool:
        """True when Completed, Failed, Terminated or Canceled."""
        return self.runtime_status in ("Completed", "Failed", "Terminated", "Canceled")


class DuroWebhookClient:
    """Client for Duro's HTTP management API.

    Args:
        base_url: Root URL of Duro's HTTP listener, e.g. ``http://127.0.0.1:7071``
            (the ``/runtime/webhooks/durabletask`` path is appended unless already present).
        system_key: The system key (``--http-system-key``), sent as ``x-functions-key``.
        timeout: Socket timeout in seconds for each request.
    """

    def __init__(self, base_url: str, system_key: str | None = None, timeout: float = 30.0):
        base = base_url.rstrip("/")
        if not base.endswith(BASE_PATH):
            base += BASE_PATH
        self.base_url = base
        self.system_key = system_key
        self.timeout = timeout

    # ----- plumbing ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        has_body: bool = False,
        headers: Mapping[str, str] | None = None,
        ok: Iterable[int] = (200, 201, 202),
    ) -> WebhookResponse:
        """Sends one request to ``base_url + path``; raises WebhookError unless the status is in ``ok``.

        ``body`` is JSON-encoded when ``has_body`` is true or ``body`` is not None.
        """
        url = self.base_url + path
        if query:
            q = {k: _query_value(v) for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        data = None
        hdrs = {"Accept": "application/json"}
        if self.system_key:
            hdrs["x-functions-key"] = self.system_key
        if body is not None or has_body:
            data = json.dumps(body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        if headers:
            hdrs.update(headers)
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, rheaders, text = resp.status, dict(resp.headers.items()), resp.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            status, rheaders = e.code, dict(e.headers.items()) if e.headers else {}
            text = e.read().decode("utf-8", errors="replace")
        result = WebhookResponse(status, rheaders, text)
        if status not in set(ok):
            raise WebhookError(status, text, url)
        return result

    # ----- orchestrations ------------------------------------------------------------------

    def start(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        signed_links: bool = False,
        signed_link_ops: str | None = None,
        signed_link_ttl: int | None = None,
    ) -> dict[str, Any]:
        """Starts an orchestration; returns the check-status payload (or signed links).

        The instance id is in the payload's ``id`` field.
        """
        path = f"/orchestrators/{_seg(orchestrator)}"
        if instance_id is not None:
            path += f"/{_seg(instance_id)}"
        query = {
            "signedLinks": True if signed_links else None,
            "signedLinkOps": signed_link_ops,
            "signedLinkTtl": signed_link_ttl,
        }
        return self.request("POST", path, query=query, body=input, ok=(202,)).json()

    def start_and_wait(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        timeout: float = 30.0,
        polling_interval: float = 0.5,
    ) -> WebhookResponse:
        """Starts an orchestration and lets the server wait up to ``timeout`` seconds.

        Returns the raw answer: 200 with the output when it completed in time, the status
        response when it failed or was terminated, else 202 with the check-status payload.
        """
        path = f"/orchestrators/{_seg(orchestrator)}"
        if instance_id is not None:
            path += f"/{_seg(instance_id)}"
        query = {"timeout": timeout, "pollingInterval": polling_interval}
        return self.request(
            "POST", path, query=query, body=input, ok=(200, 202, 500),
        )

    def get_status(
        self,
        instance_id: str,
        *,
        show_history: bool = False,
        show_history_output: bool = False,
        show_input: bool = True,
    ) -> InstanceStatus | None:
        """Returns the instance status, or None when the instance does not exist."""
        query = {
            "showHistory": show_history or None,
            "showHistoryOutput": show_history_output or None,
            "showInput": None if show_input else False,
        }
        resp = self.request("GET", f"/instances/{_seg(instance_id)}", query=query, ok=(200, 202, 404))
        if resp.status == 404:
            return None
        return InstanceStatus.from_json(resp.json())

    def list_instances(
        self,
        *,
        runtime_status: Iterable[str] | None = None,
        instance_id_prefix: str | None = None,
        created_time_from: str | None = None,
        created_time_to: str | None = None,
        top: int | None = None,
    ) -> list[InstanceStatus]:
        """Lists instances matching the filters, following continuation tokens."""
        query = {
            "runtimeStatus": ",".join(runtime_status) if runtime_status else None,
            "instanceIdPrefix": instance_id_prefix,
            "createdTimeFrom": created_time_from,
            "createdTimeTo": created_time_to,
            "top": top,
        }
        out: list[InstanceStatus] = []
        token: str | None = None
        while True:
            headers = {"x-ms-continuation-token": token} if token else None
            resp = self.request("GET", "/instances", query=query, headers=headers, ok=(200,))
            out.extend(InstanceStatus.from_json(o) for o in resp.json() or [])
            token = _header(resp.headers, "x-ms-continuation-token")
            if not token:
                return out

    def wait_for_completion(self, instance_id: str, timeout: float = 60.0, interval: float = 0.2) -> InstanceStatus:
        """Polls the status until the instance is terminal; raises TimeoutError otherwise."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            status = self.get_status(instance_id)
            if status is not None and status.is_terminal:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"instance {instance_id} not finished after {timeout}s")
            time.sleep(interval)

    def raise_event(self, instance_id: str, event_name: str, data: Any = None) -> None:
        """Raises an external event (JSON ``data``) to an instance."""
        self.request(
            "POST", f"/instances/{_seg(instance_id)}/raiseEvent/{_seg(event_name)}",
            body=data, has_body=True, ok=(202,),
        )

    def terminate(self, instance_id: str, reason: str | None = None) -> None:
        """Terminates an instance; ``reason`` becomes its output."""
        self.request("POST", f"/instances/{_seg(instance_id)}/terminate", query={"reason": reason}, ok=(202,))

    def suspend(self, instance_id: str, reason: str | None = None) -> None:
        """Suspends an instance."""
        self.request("POST", f"/instances/{_seg(instance_id)}/suspend", query={"reason": reason}, ok=(202,))

    def resume(self, instance_id: str, reason: str | None = None) -> None:
        """Resumes a suspended instance."""
        self.request("POST", f"/instances/{_seg(instance_id)}/resume", query={"reason": reason}, ok=(202,))

    def purge(self, instance_id: str) -> int:
        """Deletes a terminal instance's history; returns the number deleted (0 if not found)."""
        resp = self.request("DELETE", f"/instances/{_seg(instance_id)}", ok=(200, 404))
        return 0 if resp.status == 404 else int(resp.json().get("instancesDeleted", 0))

    def signed_links(self, instance_id: str, *, ops: str = "status", ttl_seconds: int | None = None) -> dict[str, Any]:
        """Issues signed per-instance links (Duro extension) for an end client.

        Args:
            ops: Comma-separated operations: ``status`` (always) and ``raiseEvent``.
            ttl_seconds: Lifetime of the links (default: the server's ``--http-link-ttl-seconds``).

        Returns:
            ``{"id", "statusQueryGetUri", "sendEventPostUri"?, "expiresAt"}``.
        """
        query = {"signedLinkOps": ops, "signedLinkTtl": ttl_seconds}
        return self.request("POST", f"/instances/{_seg(instance_id)}/signedLinks", query=query, ok=(200,)).json()


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _query_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None
