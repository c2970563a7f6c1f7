"""The Python side of the polyglot sample.

Registers the orchestrator ``polyglot`` (only it: work-item filters), which
1. calls the TypeScript activity ``greet_ts`` (served by ts-worker),
2. makes a durable HTTP call with ``duro.call_http`` to a local server that answers
   202 + Location first; Duro polls it and the orchestration sees the final 200, and
3. with ``DURO_SAMPLE_RUST=1``, calls the Rust activity ``shout_rust`` (rust-worker).
Then it starts one instance, waits, and prints the output as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duro
from durabletask import task


def polyglot(ctx: task.OrchestrationContext, inp: dict[str, Any]) -> Any:
    greeting = yield ctx.call_activity("greet_ts", input={"name": inp["name"]})
    resp = yield from duro.call_http(ctx, duro.DurableHttpRequest("POST", inp["url"] + "/jobs", content="{}"))
    out: dict[str, Any] = {"fromTypeScript": greeting, "http": {"status": resp.status_code, "body": resp.json()}}
    if inp.get("withRust"):
        out["fromRust"] = yield ctx.call_activity("shout_rust", input={"text": greeting["greeting"]})
    return out


def start_http_server() -> ThreadingHTTPServer:
    """A job API: POST /jobs → 202 + Location /jobs/1; GET /jobs/1 → 202 once, then 200."""
    polls = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, code: int, body: bytes = b"", location: str | None = None) -> None:
            self.send_response(code)
            if location:
                self.send_header("Location", location)
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._reply(202, location=f"http://127.0.0.1:{self.server.server_port}/jobs/1")

        def do_GET(self) -> None:
            polls["n"] += 1
            if polls["n"] < 2:
                self._reply(202, location=f"http://127.0.0.1:{self.server.server_port}/jobs/1")
            else:
                self._reply(200, json.dumps({"job": 1, "state": "done", "polls": polls["n"]}).encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    address = os.environ.get("DURO_ADDRESS", duro.DEFAULT_ADDRESS)
    server = start_http_server()
    worker = duro.new_worker(address)
    worker.add_orchestrator(polyglot)
    worker.use_work_item_filters()  # this worker receives only the `polyglot` orchestrator
    worker.start()
    try:
        client = duro.connect_client(address)
        iid = client.schedule_new_orchestration(
            polyglot, input={"name": "Duro", "url": f"http://127.0.0.1:{server.server_port}",
                             "withRust": os.environ.get("DURO_SAMPLE_RUST") == "1"})
        state = client.wait_for_orchestration_completion(iid, timeout=60)
        if state is None or state.runtime_status.name != "COMPLETED":
            print(f"orchestration did not complete: {state}", file=sys.stderr)
            return 1
        print(state.serialized_output)
        return 0
    finally:
        worker.stop()
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
