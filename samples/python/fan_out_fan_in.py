"""Fan-out/fan-in, in Python with the official Durable Task SDK: count the words of several
documents in parallel activities and sum the counts.

Run against a running Duro:  python fan_out_fan_in.py
"""
from __future__ import annotations

import os

from durabletask import client, task, worker

DOCUMENTS = [
    "durable functions make orchestration simple",
    "a sidecar owns what must survive a crash",
    "fan out then fan in",
]


def count_words(_: task.ActivityContext, text: str) -> int:
    return len(text.split())


def word_count(ctx: task.OrchestrationContext, documents: list[str]):
    counts = yield task.when_all([ctx.call_activity(count_words, input=d) for d in documents])
    return sum(counts)


def register(w: worker.TaskHubGrpcWorker) -> None:
    w.add_orchestrator(word_count)
    w.add_activity(count_words)


def main() -> None:
    address = os.environ.get("DURO_ADDRESS", "localhost:4001")
    w = worker.TaskHubGrpcWorker(host_address=address)
    register(w)
    w.start()
    try:
        c = client.TaskHubGrpcClient(host_address=address)
        iid = c.schedule_new_orchestration(word_count, input=DOCUMENTS)
        state = c.wait_for_orchestration_completion(iid, timeout=60)
        print(state.serialized_output if state else "timed out")
    finally:
        w.stop()


if __name__ == "__main__":
    main()
