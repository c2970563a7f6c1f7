"""End-to-end tests of the duro package against the real sidecar."""

from __future__ import annotations

import json
import urllib.request
from datetime import timedelta
from typing import Any

import duro
import pytest
from durabletask import client as dt_client
from durabletask import task


def http_orchestrator(ctx: task.OrchestrationContext, url: str) -> Any:
    req = duro.DurableHttpRequest(
        method="POST", uri=url + "/start", headers={"Content-Type": "application/json"},
        content='{"go": 1}', timeout=timedelta(seconds=10),
    )
    resp = yield from duro.call_http(ctx, req)
    assert isinstance(resp, duro.DurableHttpResponse)
    return {"status": resp.status_code, "body": resp.json(), "xtest": resp.header("X-Test")}


def waiter(ctx: task.OrchestrationContext, _: Any) -> Any:
    value = yield ctx.wait_for_external_event("approve")
    return {"approved": value}


@pytest.fixture(scope="module")
def worker(sidecar):  # type: ignore[no-untyped-def]
    w = duro_mod_worker(sidecar.address)
    yield w
    w.stop()


def duro_mod_worker(address: str):  # type: ignore[no-untyped-def]
    w = duro.new_worker(address)
    w.add_orchestrator(http_orchestrator)
    w.add_orchestrator(waiter)
    w.use_work_item_filters()
    w.start()
    return w


def test_request_serialization() -> None:
    req = duro.DurableHttpRequest(
        "get", "https://example.org/x", headers={"Accept": "application/json"},
        token_source=duro.ManagedIdentityTokenSource("https://management.core.windows.net", tenant_id="t1"),
        timeout=timedelta(days=1, hours=2, seconds=3.5),
    )
    assert req.to_json() == {
        "method": "GET",
        "uri": "https://example.org/x",
        "headers": {"Accept": "application/json"},
        "content": None,
        "tokenSource": {
            "kind": "AzureManagedIdentity",
            "resource": "https://management.core.windows.net/.default",
            "options": {"tenantid": "t1"},
        },
        "asynchronousPatternEnabled": True,
        "timeout": "1.02:00:03.5000000",
    }
    resp = duro.DurableHttpResponse.from_json('{"statusCode": 201, "headers": {"a": ["1", "2"]}, "content": null}')
    assert resp.status_code == 201 and resp.header("A") == "1" and resp.content is None


def test_call_http_follows_202(sidecar, worker, http_server) -> None:  # type: ignore[no-untyped-def]
    url, state = http_server
    c = duro.connect_client(sidecar.address)
    iid = c.schedule_new_orchestration(http_orchestrator, input=url)
    st = c.wait_for_orchestration_completion(iid, timeout=60)
    assert st is not None
    assert st.runtime_status == dt_client.OrchestrationStatus.COMPLETED, st.failure_details
    out = json.loads(st.serialized_output or "null")
    assert out == {"status": 200, "body": {"done": True}, "xtest": "yes"}
    assert state.polls == 3
    method, path, headers, body = state.requests[0]
    assert (method, path, body) == ("POST", "/start", '{"go": 1}')


def test_webhook_client(sidecar, worker) -> None:  # type: ignore[no-untyped-def]
    wh = duro.DuroWebhookClient(sidecar.http_url)
    payload = wh.start("waiter", {"x": 1})
    iid = payload["id"]
    assert payload["statusQueryGetUri"].startswith(sidecar.http_url + "/runtime/webhooks/durabletask/instances/")
    st = wh.get_status(iid)
    assert st is not None and st.instance_id == iid and st.name == "waiter"
    assert st.input == {"x": 1}
    wh.raise_event(iid, "approve", {"by": "alice"})
    done = wh.wait_for_completion(iid, timeout=30)
    assert done.runtime_status == "Completed"
    assert done.output == {"approved": {"by": "alice"}}
    assert any(s.instance_id == iid for s in wh.list_instances(instance_id_prefix=iid))
    assert wh.get_status("no-such-instance") is None

    # terminate with reason
    iid2 = wh.start("waiter", None, instance_id="py-term-1")["id"]
    assert iid2 == "py-term-1"
    wh.terminate(iid2, reason="stop it")
    st2 = wh.wait_for_completion(iid2, timeout=30)
    assert st2.runtime_status == "Terminated" and st2.output == "stop it"
    assert wh.purge(iid2) == 1
    with pytest.raises(duro.WebhookError) as err:
        wh.raise_event(iid2, "approve", 1)
    assert err.value.status == 404


def test_check_status_helpers(sidecar, worker) -> None:  # type: ignore[no-untyped-def]
    wh = duro.DuroWebhookClient(sidecar.http_url)
    started = wh.start("waiter", None)
    iid = started["id"]
    resp = duro.create_check_status_response(sidecar.http_url, iid)
    assert resp.status == 202 and resp.headers["Retry-After"] == "10"
    # The locally built payload matches what Duro itself answers on start.
    assert resp.body == started
    assert resp.headers["Location"] == started["statusQueryGetUri"]
    with urllib.request.urlopen(resp.headers["Location"]) as r:
        assert r.status == 202 and json.loads(r.read())["instanceId"] == iid

    signed = duro.create_signed_link_response(wh, iid, ops="status,raiseEvent", ttl_seconds=600)
    assert signed.status == 202 and "sig=" in signed.body["statusQueryGetUri"]
    assert "expiresAt" in signed.body
    # A signed link works without a key; use it to raise the event.
    send = signed.body["sendEventPostUri"].replace("{eventName}", "approve")
    req = urllib.request.Request(send, data=b'"ok"', method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 202
    done = wh.wait_for_completion(iid, timeout=30)
    assert done.output == {"approved": "ok"}
    assert isinstance(signed.body_bytes(), bytes)


def test_start_with_signed_links(sidecar, worker) -> None:  # type: ignore[no-untyped-def]
    wh = duro.DuroWebhookClient(sidecar.http_url)
    body = wh.start("waiter", None, signed_links=True, signed_link_ops="status")
    assert set(body) >= {"id", "statusQueryGetUri", "expiresAt"} and "sendEventPostUri" not in body
    wh.terminate(body["id"])
