"""Duro extensions for the Durable Task Python SDK (``durabletask``).

Durable HTTP (:func:`call_http`), a client for Duro's HTTP management API
(:class:`DuroWebhookClient`), check-status response helpers and connection helpers.
Replay and everything else come from the official SDK unchanged.
"""

from .checkstatus import (
    CheckStatusResponse,
    create_check_status_response,
    create_http_management_payload,
    create_signed_link_response,
)
from .connect import DEFAULT_ADDRESS, connect_client, new_worker
from .http import (
    HTTP_ACTIVITY_NAME,
    DurableHttpRequest,
    DurableHttpResponse,
    ManagedIdentityTokenSource,
    call_http,
    call_http_task,
)
from .webhooks import DuroWebhookClient, InstanceStatus, WebhookError, WebhookResponse

__all__ = [
    "DEFAULT_ADDRESS",
    "HTTP_ACTIVITY_NAME",
    "CheckStatusResponse",
    "DurableHttpRequest",
    "DurableHttpResponse",
    "DuroWebhookClient",
    "InstanceStatus",
    "ManagedIdentityTokenSource",
    "WebhookError",
    "WebhookResponse",
    "call_http",
    "call_http_task",
    "connect_client",
    "create_check_status_response",
    "create_http_management_payload",
    "create_signed_link_response",
    "new_worker",
]
__version__ = "0.1.0"
