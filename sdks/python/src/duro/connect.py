"""Connection helpers returning the official SDK's gRPC client and worker."""

from __future__ import annotations

import os
from typing import Any

from durabletask import client as _client
from durabletask import worker as _worker

DEFAULT_ADDRESS = "localhost:4001"
"""Duro's default gRPC address."""


def _address(address: str | None) -> str:
    return address or os.environ.get("DURO_ADDRESS") or DEFAULT_ADDRESS


def connect_client(
    address: str | None = None,
    secure: bool = False,
    metadata: list[tuple[str, str]] | None = None,
    **kwargs: Any,
) -> _client.TaskHubGrpcClient:
    """Returns a ``TaskHubGrpcClient`` for Duro.

    Args:
        address: ``host:port`` of Duro's gRPC listener; default ``$DURO_ADDRESS`` or ``localhost:4001``.
        secure: Use TLS.
        metadata: gRPC metadata sent with every call (e.g. an ``authorization`` header).
        **kwargs: Passed to ``TaskHubGrpcClient``.
    """
    return _client.TaskHubGrpcClient(
        host_address=_address(address), secure_channel=secure, metadata=metadata, **kwargs,
    )


def new_worker(
    address: str | None = None,
    secure: bool = False,
    metadata: list[tuple[str, str]] | None = None,
    **kwargs: Any,
) -> _worker.TaskHubGrpcWorker:
    """Returns a ``TaskHubGrpcWorker`` for Duro (register functions, then ``start()``).

    Call ``worker.use_work_item_filters()`` after registering to receive only the
    orchestrators and activities this worker registered (useful with several workers in
    different languages on one Duro).
    """
    return _worker.TaskHubGrpcWorker(
        host_address=_address(address), secure_channel=secure, metadata=metadata, **kwargs,
    )
