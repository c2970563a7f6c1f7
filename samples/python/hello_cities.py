"""Hello cities, in Python with the official Durable Task SDK: three activities in sequence.

Run against a running Duro:  python hello_cities.py   (DURO_ADDRESS defaults to localhost:4001)
"""
from __future__ import annotations

import os

from durabletask import client, task, worker


def say_hello(_: task.ActivityContext, city: str) -> str:
    return f"Hello {city}!"


def hello_cities(ctx: task.OrchestrationContext, _):
    greetings = []
    for city in ("Tokyo", "Seattle", "London"):
        greetings.append((yield ctx.call_activity(say_hello, input=city)))
    return greetings


def register(w: worker.TaskHubGrpcWorker) -> None:
    w.add_orchestrator(hello_cities)
    w.add_activity(say_hello)


def main() -> None:
    address = os.environ.get("DURO_ADDRESS", "localhost:4001")
    w = worker.TaskHubGrpcWorker(host_address=address)
    register(w)
    w.start()
    try:
        c = client.TaskHubGrpcClient(host_address=address)
        iid = c.schedule_new_orchestration(hello_cities)
        state = c.wait_for_orchestration_completion(iid, timeout=60)
        print(state.serialized_output if state else "timed out")
    finally:
        w.stop()


if __name__ == "__main__":
    main()
