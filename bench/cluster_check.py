#!/usr/bin/env python3
"""Helpers of bench/cluster.sh that read a PostgreSQL task hub directly (through `psql`).

    cluster_check.py check URL HUB          every instance of the hub: completed, with the output only its
                                             input can produce, and a history without duplicated events
    cluster_check.py snapshot URL HUB OWNER  instances leased by OWNER now: "id<TAB>history_len<TAB>status" lines
    cluster_check.py watch URL HUB SNAPSHOT T0 [TIMEOUT]
                                             polls those instances until each completes or gets a new
                                             history event; seconds since T0 (epoch seconds) per instance

Each prints one JSON object. History events are HistoryEvent protobufs (proto/orchestrator_service.proto),
decoded here with a minimal wire-format reader: only the fields the checks need.
"""

import json
import os
import statistics
import subprocess
import sys
import time

COMPLETED = 1  # OrchestrationStatus
TERMINAL = {1, 3, 4, 5}  # completed, failed, canceled, terminated
# HistoryEvent oneof field numbers.
EXECUTION_STARTED, EXECUTION_COMPLETED, TASK_SCHEDULED, TASK_COMPLETED, TASK_FAILED = 3, 4, 6, 7, 8


def psql(url, sql):
    out = subprocess.run(
        ["psql", url, "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def varint(b, i):
    shift = value = 0
    while True:
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def fields(b):
    """Yields (field number, wire type, value) of one message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 1:
            v, i = b[i : i + 8], i + 8
        elif wt == 2:
            n, i = varint(b, i)
            v, i = b[i : i + n], i + n
        elif wt == 5:
            v, i = b[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, v


def int32(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def decode(event):
    """(kind, eventId, taskScheduledId) of a HistoryEvent; kind is the oneof field number."""
    kind, event_id, scheduled_id = None, 0, None
    for num, wt, v in fields(event):
        if num == 1 and wt == 0:
            event_id = int32(v)
        elif num >= 3 and wt == 2:
            kind = num
            if num in (TASK_COMPLETED, TASK_FAILED):
                scheduled_id = 0
                for n2, w2, v2 in fields(v):
                    if n2 == 1 and w2 == 0:
                        scheduled_id = int32(v2)
    return kind, event_id, scheduled_id


def expected_output(name, inp):
    x = json.loads(inp)
    i, m = x.get("I", 0), x.get("M", 0)
    if name == "Sequence":
        return i + m
    if name == "FanOut":
        return m * i + m * (m + 1) // 2
    if name == "Timers":
        return i + m
    return None


def check(url, hub):
    instances = psql(
        url, f"SELECT instance_id, name, status, coalesce(input, ''), coalesce(output, '') FROM {hub}.instances"
    )
    histories = {}
    for iid, seq, hexev in psql(url, f"SELECT instance_id, seq, encode(event, 'hex') FROM {hub}.history ORDER BY 1, 2"):
        histories.setdefault(iid, []).append((int(seq), decode(bytes.fromhex(hexev))))
    res = {
        "instances": len(instances),
        "completed_correctly": 0,
        "not_completed": 0,
        "wrong_output": 0,
        "duplicated_task_scheduled": 0,
        "duplicated_task_completed": 0,
        "duplicated_execution_completed": 0,
        "history_seq_gaps": 0,
        "history_events": 0,
        "examples": [],
    }

    def bad(key, iid, what):
        res[key] += 1
        if len(res["examples"]) < 10:
            res["examples"].append(f"{iid}: {what}")

    for iid, name, status, inp, out in instances:
        status = int(status)
        hist = histories.get(iid, [])
        res["history_events"] += len(hist)
        seqs = [s for s, _ in hist]
        if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            bad("history_seq_gaps", iid, f"seq {seqs}")
        scheduled, completed, finished = {}, {}, 0
        for _, (kind, event_id, sched_id) in hist:
            if kind == TASK_SCHEDULED:
                scheduled[event_id] = scheduled.get(event_id, 0) + 1
            elif kind in (TASK_COMPLETED, TASK_FAILED):
                completed[sched_id] = completed.get(sched_id, 0) + 1
            elif kind == EXECUTION_COMPLETED:
                finished += 1
        if any(n > 1 for n in scheduled.values()):
            bad("duplicated_task_scheduled", iid, f"taskScheduled ids {sorted(scheduled.items())}")
        if any(n > 1 for n in completed.values()):
            bad("duplicated_task_completed", iid, f"taskCompleted ids {sorted(completed.items())}")
        if finished > 1:
            bad("duplicated_execution_completed", iid, f"{finished} executionCompleted")
        if status != COMPLETED:
            bad("not_completed", iid, f"status {status}")
            continue
        want = expected_output(name, inp)
        if want is not None and out != str(want):
            bad("wrong_output", iid, f"output {out!r}, want {want}")
            continue
        res["completed_correctly"] += 1
    res["ok"] = (
        res["instances"] > 0
        and res["completed_correctly"] == res["instances"]
        and not any(
            res[k]
            for k in (
                "duplicated_task_scheduled",
                "duplicated_task_completed",
                "duplicated_execution_completed",
                "history_seq_gaps",
            )
        )
    )
    return res


def snapshot(url, hub, owner):
    rows = psql(
        url,
        f"SELECT instance_id, history_len, status FROM {hub}.instances WHERE lease_owner = '{owner}'",
    )
    acts = psql(url, f"SELECT count(*) FROM {hub}.activities WHERE lease_owner = '{owner}'")
    for r in rows:
        print("\t".join(r))
    print(f"# activities\t{acts[0][0]}", file=sys.stderr)


def watch(url, hub, snap_file, t0, timeout):
    start = {}
    with open(snap_file) as f:
        for line in f:
            iid, hlen, status = line.rstrip("\n").split("\t")
            if int(status) not in TERMINAL:
                start[iid] = int(hlen)
    progressed = {}
    ids = ",".join("'" + i.replace("'", "''") + "'" for i in start)
    deadline = time.time() + timeout
    new_owner = {}
    while len(progressed) < len(start) and time.time() < deadline:
        now = time.time()
        for iid, hlen, status, owner in psql(
            url,
            f"SELECT instance_id, history_len, status, coalesce(lease_owner, '') FROM {hub}.instances WHERE instance_id IN ({ids})",  # noqa: E501 (one row of a markdown table or one SQL statement)
        ):
            if iid in progressed:
                continue
            if int(hlen) > start[iid] or int(status) in TERMINAL:
                progressed[iid] = now - t0
                new_owner[iid] = owner
        time.sleep(0.1)
    waits = sorted(progressed.values())
    return {
        "instances_leased_at_kill": len(start),
        "progressed": len(progressed),
        "not_progressed": len(start) - len(progressed),
        "seconds_to_progress": {
            "min": round(waits[0], 2) if waits else None,
            "median": round(statistics.median(waits), 2) if waits else None,
            "max": round(waits[-1], 2) if waits else None,
        },
        "new_owners": sorted({o for o in new_owner.values() if o}),
    }


def arith(v):
    """A sum of terms a/b or a-b as written by cluster.sh ('123/100', '17.2-15.1')."""
    if "/" in v:
        a, b = v.split("/")
        return float(a) / float(b) if float(b) else 0.0
    if "-" in v[1:]:
        a, b = v.rsplit("-", 1)
        return float(a) - float(b)
    return float(v)


def delta_pair(v):
    """'x0 a0|x1 a1' (pg_xacts before|after) -> (transactions, active ms)."""
    before, after = v.split("|")
    b, a = [float(x) for x in before.split()], [float(x) for x in after.split()]
    return [y - x for x, y in zip(b, a, strict=False)]


def value(key, v):
    if key in ("check", "watch"):
        return json.loads(v) if v else {}
    if key in ("pg_cpu_seconds", "machine_busy_core_seconds", "elapsed_seconds"):
        return round(arith(v), 2)
    if key.endswith("pg_xacts"):
        d = delta_pair(v)
        return {"transactions": int(d[0]), "active_ms": round(d[1]), "write_transactions": int(d[2])}
    if key == "commit_sum_count":
        # mean commit ms per sidecar (None: this store does not time its commits)
        return [round(arith(t) * 1000, 3) if not t.endswith("/0") else None for t in v.split()]
    try:
        return int(v)
    except ValueError:
        return v


def record(path, args):
    """Writes one phase's JSON: key=value pairs, then '--' and the drivers' JSON files."""
    i = args.index("--")
    rec = {}
    for kv in args[:i]:
        k, v = kv.split("=", 1)
        rec[k] = value(k, v)
    drivers = []
    for f in args[i + 1 :]:
        try:
            with open(f) as fh:
                drivers.append(json.load(fh))
        except (OSError, ValueError):
            pass  # a killed driver writes nothing
    rec["drivers"] = drivers
    ok = True
    if drivers:
        wall = max(d["wall_seconds"] for d in drivers)
        done = sum(d["completed"] for d in drivers)
        agg = {
            "completed": done,
            "failed": sum(d["failed"] for d in drivers),
            "wall_seconds": wall,
            "orchestrations_per_sec": round(done / wall, 1),
            "activities_per_sec": round(sum(d["completed"] * d["m"] for d in drivers) / wall, 1),
            "activity_runs": sum(d.get("activity_runs", 0) for d in drivers),
            "work_items_per_sec": round(sum(d["work_items"] for d in drivers) / wall, 1),
            "latency_p50_ms_mean": round(statistics.mean(d["latency_ms"]["p50"] for d in drivers), 1),
            "latency_p99_ms_max": max(d["latency_ms"]["p99"] for d in drivers),
            "duro_cpu_seconds": round(sum(d["sidecar_cpu_seconds"] for d in drivers), 2),
            "driver_cpu_seconds": round(sum(d["driver_cpu_seconds"] for d in drivers), 2),
            "duro_runqueue_wait_seconds": round(sum(d["sidecar_runqueue_wait_seconds"] for d in drivers), 2),
        }
        if "elapsed_seconds" in rec and rec["elapsed_seconds"]:
            agg["busy_cores"] = round(rec["machine_busy_core_seconds"] / rec["elapsed_seconds"], 2)
        if "pg_xacts" in rec and done:
            agg["pg_write_transactions_per_orchestration"] = round(rec["pg_xacts"]["write_transactions"] / done, 1)
            agg["pg_transactions_per_orchestration"] = round(rec["pg_xacts"]["transactions"] / done, 1)
            agg["pg_active_ms_per_transaction"] = round(
                rec["pg_xacts"]["active_ms"] / max(rec["pg_xacts"]["transactions"], 1), 3
            )
        rec["aggregate"] = agg
    if "idle_pg_xacts" in rec:
        # One of the transactions is pg_xacts's own read; three sidecars.
        x = rec["idle_pg_xacts"]["transactions"] - 1
        rec["idle_transactions_per_sidecar_per_sec"] = round(x / rec["idle_window_seconds"] / 3, 2)
    chk = rec.get("check") or {}
    if chk and not chk.get("ok"):
        ok = False
    if rec.get("phase") == "throughput" and rec.get("drivers_ok") != 1:
        ok = False
    rec["ok"] = ok
    with open(path, "w") as fh:
        json.dump(rec, fh, indent=2)
        fh.write("\n")
    if not ok:
        print(f"!! {path}: check failed", file=sys.stderr)
        sys.exit(1)


def report(out_dir, md_path, meta_args):
    meta = dict(kv.split("=", 1) for kv in meta_args)
    recs = []
    for f in sorted(os.listdir(out_dir)):
        if f.endswith(".json"):
            with open(os.path.join(out_dir, f)) as fh:
                recs.append(json.load(fh))
    L = [
        "# Duro on a shared PostgreSQL task hub: cluster benchmark",
        "",
        f'Written by `bash bench/cluster.sh` (see [NOTES.md](../NOTES.md), "PostgreSQL: several sidecars"). '
        f"Date: {meta.get('date')}. Machine: {meta.get('machine')}. Commit: `{meta.get('commit')}`. "
        f"PostgreSQL {meta.get('postgres')}, on the same machine. Load average before: {meta.get('load')}.",
        "",
        "> Everything shares the machine's cores: PostgreSQL, every duro and every driver (Go SDK client and worker). "
        "Figures with 2 or 3 sidecars show how the work spreads, not how a real cluster with a core per sidecar scales.",  # noqa: E501 (one row of a markdown table or one SQL statement)
        "",
        "## Throughput",
        "",
        "Each sidecar has its own driver process (client + one SDK worker connection, the same settings for every "
        "row); orch/s and activities/s are the sum over drivers ÷ the longest driver's wall time. p50 is the mean "
        "of the drivers' p50s, p99 the largest driver p99. CPU seconds during the run: all duros, all drivers, "
        "the whole PostgreSQL server; busy cores = machine-wide busy CPU ÷ elapsed.",
        "",
        "| Scenario | Store | Sidecars | Orchestrations | orch/s | activities/s | p50 ms | p99 ms | duro CPU s | driver CPU s | PG CPU s | busy cores | PG write xacts / orch | PG ms / xact | commit ms (per sidecar) | checks |",  # noqa: E501 (one row of a markdown table or one SQL statement)
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    tp = [r for r in recs if r.get("phase") == "throughput"]
    tp.sort(key=lambda r: (r["scenario"] != "sequence", r["backend"] != "sqlite", r["sidecars"]))
    for r in tp:
        a = r.get("aggregate", {})
        chk = r.get("check") or {}
        checks = "ok" if r.get("ok") else "FAILED"
        if chk:
            checks += (
                f" ({chk['completed_correctly']}/{chk['instances']} correct, 0 dup)" if chk.get("ok") else f" {chk}"
            )
        L.append(
            f"| {r['scenario']} {r['n']}×{r['m']} | {'PostgreSQL' if r['backend'] == 'pg' else 'SQLite'} | {r['sidecars']} "  # noqa: E501 (one row of a markdown table or one SQL statement)
            f"| {a.get('completed')} | **{a.get('orchestrations_per_sec')}** | {a.get('activities_per_sec')} "
            f"| {a.get('latency_p50_ms_mean')} | {a.get('latency_p99_ms_max')} | {a.get('duro_cpu_seconds')} "
            f"| {a.get('driver_cpu_seconds')} | {r.get('pg_cpu_seconds') if r['backend'] == 'pg' else '—'} "
            f"| {a.get('busy_cores')} | {a.get('pg_write_transactions_per_orchestration', '—') if r['backend'] == 'pg' else '—'} "  # noqa: E501 (one row of a markdown table or one SQL statement)
            f"| {a.get('pg_active_ms_per_transaction', '—') if r['backend'] == 'pg' else '—'} "
            f"| {', '.join('—' if c is None else str(c) for c in r.get('commit_sum_count', []))} | {checks} |"
        )
    fo = [r for r in recs if r.get("phase") == "failover"]
    if fo:
        L += [
            "",
            "## Failover: kill -9 of one sidecar of three",
            "",
            "Three sidecars under `sequence` load (one driver each); after the warm-up the third sidecar and its "
            "driver are killed with SIGKILL (the pod dies). Instances leased by the dead sidecar are read from "
            "`instances.lease_owner` right after the kill; the time to progress is from the kill until each gets a "
            "new history event or finishes on a survivor. The checker then reads every instance of the hub: "
            "status, output (only its input can produce it) and history (no taskScheduled id or taskCompleted "
            "`taskScheduledId` twice, one executionCompleted, contiguous seq). Idle traffic: PostgreSQL "
            "transactions per sidecar and second with three idle sidecars and no worker (renewals only).",
            "",
            "| Lease s | Instances leased at kill | activities leased | progress median s | progress max s | not progressed | instances in hub | lost | wrong | duplicated events | activity runs (n·m of finished) | idle xacts/s per sidecar | checks |",  # noqa: E501 (one row of a markdown table or one SQL statement)
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in sorted(fo, key=lambda r: -r["lease_seconds"]):
            w, c = r.get("watch", {}), r.get("check", {})
            dup = (
                c.get("duplicated_task_scheduled", 0)
                + c.get("duplicated_task_completed", 0)
                + c.get("duplicated_execution_completed", 0)
            )
            L.append(
                f"| {r['lease_seconds']} | {w.get('instances_leased_at_kill')} | {r.get('activities_leased_at_kill')} "
                f"| {w.get('seconds_to_progress', {}).get('median')} | **{w.get('seconds_to_progress', {}).get('max')}** "  # noqa: E501 (one row of a markdown table or one SQL statement)
                f"| {w.get('not_progressed')} | {c.get('instances')} | **{c.get('not_completed')}** | {c.get('wrong_output')} "  # noqa: E501 (one row of a markdown table or one SQL statement)
                f"| **{dup}** | {r.get('aggregate', {}).get('activity_runs', '—')} (survivors' drivers) "
                f"| {r.get('idle_transactions_per_sidecar_per_sec')} | {'ok' if r.get('ok') else 'FAILED'} |"
            )
    sb = [r for r in recs if r.get("phase") == "splitbrain"]
    if sb:
        L += [
            "",
            "## Split brain: one sidecar frozen past its lease",
            "",
            "Three sidecars under `sequence` load; the third is stopped with SIGSTOP (its driver keeps running) for "
            'three lease lengths, then resumed with SIGCONT. "lease lost" lines in its log (each a fenced commit or a '
            "renewal that found the lease taken), `duro_leases_lost` on its `/metrics`.",
            "",
            '| Lease s | frozen s | leased at freeze | activities leased | taken over while frozen | "lease lost" log lines | duro_leases_lost | activity leases lost | instances | lost | wrong | duplicated events | all drivers ok | checks |',  # noqa: E501 (one row of a markdown table or one SQL statement)
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
        ]
        for r in sb:
            c = r.get("check", {})
            dup = (
                c.get("duplicated_task_scheduled", 0)
                + c.get("duplicated_task_completed", 0)
                + c.get("duplicated_execution_completed", 0)
            )
            L.append(
                f"| {r['lease_seconds']} | {r['frozen_seconds']} | {r['leased_at_freeze']} | {r.get('activities_leased_at_freeze')} "  # noqa: E501 (one row of a markdown table or one SQL statement)
                f"| {r['taken_over_while_frozen']} | {r['lease_lost_log_lines']} | {r['duro_leases_lost']} "
                f"| {r['activity_leases_lost']} | {c.get('instances')} | **{c.get('not_completed')}** | {c.get('wrong_output')} "  # noqa: E501 (one row of a markdown table or one SQL statement)
                f"| **{dup}** | {'yes' if r.get('drivers_ok') == 1 else 'no'} | {'ok' if r.get('ok') else 'FAILED'} |"
            )
    L += ["", "Raw figures: `bench/results/cluster/*.json`."]
    with open(md_path, "w") as fh:
        fh.write("\n".join(L) + "\n")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "check":
        print(json.dumps(check(*args), indent=2))
    elif cmd == "snapshot":
        snapshot(*args)
    elif cmd == "watch":
        url, hub, snap, t0 = args[:4]
        timeout = float(args[4]) if len(args) > 4 else 60
        print(json.dumps(watch(url, hub, snap, float(t0), timeout), indent=2))
    elif cmd == "record":
        record(args[0], args[1:])
    elif cmd == "report":
        report(args[0], args[1], args[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
