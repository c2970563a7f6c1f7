"""A worker process for test_failover: serves `failover_slow_activity`, which writes a marker
file when it starts and then blocks, so the test can kill this process mid-activity."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from durabletask import task, worker

address, marker = sys.argv[1], Path(sys.argv[2])


def failover_slow_activity(_: task.ActivityContext, x: int) -> int:
    marker.write_text("started")
    time.sleep(600)
    return -1


w = worker.TaskHubGrpcWorker(host_address=address)
w.add_activity(failover_slow_activity)
w.start()
while True:
    time.sleep(1)
