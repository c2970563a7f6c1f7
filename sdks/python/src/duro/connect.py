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


def _auth(
    metadata: list[tuple[str, str]] | None, api_token: str | None, secure: bool, ca_file: str | None,
) -> tuple[list[tuple[str, str]] | None, bool]:
    """Adds Duro's API token (``--api-token``; default ``$DURO_API_TOKEN``) as the
    ``authorization: Bearer`` metadata of every call, and trusts ``ca_file`` (default
    ``$DURO_TLS_CA_FILE``) for TLS. gRPC reads extra roots from
    ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, which is process-wide: one CA per process."""
    token = api_token if api_token is not None else os.environ.get("DURO_API_TOKEN")
    if token:
        metadata = [m for m in (metadata or []) if m[0].lower() != "authorization"]
        metadata.append(("authorization", f"Bearer {token}"))
    ca = ca_file if ca_file is not None else os.environ.get("DURO_TLS_CA_FILE")
    if ca:
        if not os.path.isfile(ca):
            raise FileNotFoundError(f"the CA certificate file {ca!r} does not exist")
        os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = ca
        secure = True
    return metadata, secure


def connect_client(
    address: str | None = None,
    secure: bool = False,
    metadata: list[tuple[str, str]] | None = None,
    api_token: str | None = None,
    ca_file: str | None = None,
    **kwargs: Any,
) -> _client.TaskHubGrpcClient:
    """Returns a ``TaskHubGrpcClient`` for Duro.

    Args:
        address: ``host:port`` of Duro's gRPC listener; default ``$DURO_ADDRESS`` or ``localhost:4001``.
        secure: Use TLS.
        metadata: gRPC metadata sent with every call.
        api_token: Duro's API token (``--api-token``); default ``$DURO_API_TOKEN``; none on loopback.
        ca_file: PEM file of the CA that signed Duro's TLS certificate (implies ``secure``);
            default ``$DURO_TLS_CA_FILE``.
        **kwargs: Passed to ``TaskHubGrpcClient``.
    """
    metadata, secure = _auth(metadata, api_token, secure, ca_file)
    return _client.TaskHubGrpcClient(
        host_address=_address(address), secure_channel=secure, metadata=metadata, **kwargs,
    )


def new_worker(
    address: str | None = None,
    secure: bool = False,
    metadata: list[tuple[str, str]] | None = None,
    api_token: str | None = None,
    ca_file: str | None = None,
    **kwargs: Any,
) -> _worker.TaskHubGrpcWorker:
    """Returns a ``TaskHubGrpcWorker`` for Duro (register functions, then ``start()``).

    ``api_token`` and ``ca_file`` as for :func:`connect_client`. Call
    ``worker.use_work_item_filters()`` after registering to receive only the orchestrators
    and activities this worker registered (useful with several workers in different
    languages on one Duro).
    """
    metadata, secure = _auth(metadata, api_token, secure, ca_file)
    return _worker.TaskHubGrpcWorker(
        host_address=_address(address), secure_channel=secure, metadata=metadata, **kwargs,
    )
