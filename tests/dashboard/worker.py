"""Worker and client for the dashboard's browser tests, with the official Python SDK.

Connects to Duro at argv[1] (host:port), registers the orchestrations below, starts one
instance of each scenario, waits until the finished ones have finished, prints their ids as
one JSON line and keeps serving work until its standard input closes.
"""

from __future__ import annotations

import json
import sys
import time

from durabletask import client, entities, task, worker

XSS = "<img src=x onerror=alert(1)>"


def hello(ctx, name):
    return f"Hello {name}!"


def explode(ctx, _):
    raise ValueError("the activity exploded on purpose")


def greet(ctx: task.OrchestrationContext, name):
    a = yield ctx.call_activity(hello, input=name or "Tokyo")
    b = yield ctx.call_activity(hello, input="London")
    return [a, b]


def fails(ctx: task.OrchestrationContext, _):
    yield ctx.call_activity(explode, input=None)
    return "never"


def approval(ctx: task.OrchestrationContext, _):
    ctx.set_custom_status("waiting for approval")
    decision = yield ctx.wait_for_external_event("approve")
    return {"approved": decision}


def child(ctx: task.OrchestrationContext, n):
    r = yield ctx.call_activity(hello, input=f"child {n}")
    return r


def fan_out(ctx: task.OrchestrationContext, _):
    kids = [ctx.call_sub_orchestrator(child, input=i, instance_id=f"{ctx.instance_id}-child-{i}") for i in range(3)]
    results = yield task.when_all(kids)
    return results


class Note(entities.DurableEntity):
    """An entity whose state is user text (the dashboard must show it as text)."""

    def set(self, text: str) -> None:
        self.set_state(text)


def main() -> None:
    address = sys.argv[1]
    with worker.TaskHubGrpcWorker(host_address=address) as w:
        for o in (greet, fails, approval, child, fan_out):
            w.add_orchestrator(o)
        for a in (hello, explode):
            w.add_activity(a)
        w.add_entity(Note)
        w.start()
        with client.TaskHubGrpcClient(host_address=address) as c:
            ids = {
                "completed": c.schedule_new_orchestration(greet, input="Tokyo", instance_id="greet-ok"),
                "failed": c.schedule_new_orchestration(fails, instance_id="fails-1"),
                "waiting": c.schedule_new_orchestration(approval, instance_id="approval-1"),
                "to_terminate": c.schedule_new_orchestration(approval, instance_id="approval-2"),
                "fanout": c.schedule_new_orchestration(fan_out, instance_id="fanout-1"),
                "xss": c.schedule_new_orchestration(greet, input=XSS, instance_id="xss-1"),
            }
            for key in ("completed", "failed", "fanout", "xss"):
                c.wait_for_orchestration_completion(ids[key], timeout=60)
            for key in ("waiting", "to_terminate"):
                c.wait_for_orchestration_start(ids[key], timeout=60)
            note = entities.EntityInstanceId("Note", "xss")
            c.signal_entity(note, "set", XSS)
            for _ in range(600):
                md = c.get_entity(note, include_state=True)
                if md is not None and md.get_typed_state() == XSS:
                    break
                time.sleep(0.1)
            else:
                raise SystemExit("the Note entity never got its state")
            ids["entity"] = "@note@xss"
            print(json.dumps(ids), flush=True)
            sys.stdin.read()


if __name__ == "__main__":
    main()
