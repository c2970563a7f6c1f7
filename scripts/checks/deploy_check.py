#!/usr/bin/env python3
"""Checks deploy/ without a Docker daemon or a cluster (run by scripts/checks/deploy.sh).

- Dockerfile: every VOLUME directory is created and owned by the image's USER; the build
  context's .dockerignore leaves out target/, venvs and node_modules; the ENTRYPOINT runs
  with the image's exact ENV and arguments as the image's USER (the VOLUME mapped to a
  temporary directory owned like in the image), serves every EXPOSEd port on all
  interfaces (so `docker run -p` reaches it) and stops cleanly on SIGTERM.
- kubernetes/*.yaml, or the manifests named after DURO_BIN (deploy.sh passes the Helm
  chart's renderings too), after kubeconform's schema check: what a pod refers to exists
  (service account, secrets and their keys, claims, the Service's selector and ports), and
  the duro container starts with its exact args and env (secrets resolved from the
  manifest's Secret, so a secret Duro would refuse fails here) as the image's user, answers
  its probes (ports; HTTP probes with 200 on their path) and stops cleanly.

Usage: deploy_check.py DURO_BIN [MANIFEST...]. Run inside a private network namespace (deploy.sh does,
as root) so the real ports 4001/7071 are free; elsewhere the ports are checked only after
the listen addresses are moved to free ports.
"""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
failures = []
# Replicas are checked at once, from threads: one line at a time.
output = threading.Lock()


def fail(msg):
    with output:
        failures.append(msg)
        print(f"FAIL: {msg}", flush=True)


def ok(msg):
    with output:
        print(f"ok: {msg}", flush=True)


def parse_dockerfile(path):
    """The final stage's instructions: [(INSTRUCTION, argument text)], continuations joined."""
    lines, cur = [], ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        lines.append(cur.strip())
        cur = ""
    stages = []
    for line in lines:
        instr, _, arg = line.partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr.upper(), arg.strip()))
    return stages[-1]


def env_pairs(arg):
    """ENV k=v k2=v2 (the key=value form)."""
    return dict(tok.split("=", 1) for tok in shlex.split(arg))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def isolated():
    """Inside a network namespace of our own (deploy.sh sets DURO_DEPLOY_NETNS)?"""
    return os.environ.get("DURO_DEPLOY_NETNS") == "1"


def user_prefix(uid, gid):
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def http_status(port, path):
    """Status of GET http://127.0.0.1:port/path, or None when nothing answers."""
    import http.client

    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path)
        status = c.getresponse().status
        c.close()
        return status
    except OSError:
        return None


def run_duro(what, duro, args, env, uid, gid, ports, data_dir, http_gets=()):
    """Starts duro as uid:gid; every port must accept on 127.0.0.1 and every (port, path) of
    http_gets answer 200 (as a kubelet probe would); then SIGTERM: exit 0 and no WAL left in
    data_dir."""
    log = data_dir.parent / (re.sub(r"[^A-Za-z0-9_.-]", "-", what) + ".log")
    with open(log, "w") as out:
        proc = subprocess.Popen(user_prefix(uid, gid) + [str(duro)] + args, env=env, stdout=out, stderr=out)
    deadline = time.time() + 20
    pending = set(ports)
    while pending and time.time() < deadline and proc.poll() is None:
        for p in list(pending):
            try:
                socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                pending.discard(p)
            except OSError:
                pass
        time.sleep(0.05)
    text = lambda: log.read_text().strip()  # noqa: E731
    if proc.poll() is not None:
        fail(f"{what}: duro exited with {proc.returncode} instead of serving: {text()}")
        return
    if pending:
        proc.kill()
        proc.wait()
        fail(f"{what}: ports {sorted(pending)} not served within 20 s: {text()}")
        return
    for port, path in http_gets:
        status = http_status(port, path)
        while status != 200 and time.time() < deadline:
            time.sleep(0.1)
            status = http_status(port, path)
        if status != 200:
            fail(f"{what}: probe GET :{port}{path} answered {status}, not 200")
        else:
            ok(f"{what}: probe GET :{port}{path} answered 200")
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        fail(f"{what}: did not stop within 20 s of SIGTERM")
        return
    if code != 0:
        fail(f"{what}: exit code {code} after SIGTERM: {text()}")
        return
    wal = [p.name for p in data_dir.glob("*-wal") if p.stat().st_size > 0]
    if wal:
        fail(f"{what}: WAL left after a clean shutdown: {wal}")
        return
    ok(f"{what}: served {sorted(ports)} as {uid}:{gid}, stopped cleanly on SIGTERM")


def listen_port(addr):
    return int(addr.rsplit(":", 1)[1])


def check_dockerfile(duro, tmp):
    stage = parse_dockerfile(DEPLOY / "Dockerfile")
    user = [a for i, a in stage if i == "USER"]
    if not user:
        fail("Dockerfile: the final stage sets no USER (runs as root)")
        return
    uid, _, gid = user[-1].partition(":")
    uid, gid = int(uid), int(gid or uid)
    runs = " ".join(a for i, a in stage if i == "RUN")
    volumes = []
    for i, a in stage:
        if i == "VOLUME":
            volumes += json.loads(a) if a.startswith("[") else a.split()
    prepared = set()
    for v in volumes:
        if not re.search(rf"mkdir -p [^&;]*{re.escape(v)}\b", runs) or not re.search(
            rf"chown [^&;]*{uid}(:{gid})? [^&;]*{re.escape(v)}\b", runs
        ):
            fail(f"Dockerfile: VOLUME {v} is not created and chowned to {uid}:{gid} in a RUN of the final stage")
        else:
            prepared.add(v)
            ok(f"Dockerfile: VOLUME {v} exists and belongs to {uid}:{gid}")
    ignore = (ROOT / ".dockerignore").read_text().split() if (ROOT / ".dockerignore").exists() else []
    for must in ["target/", ".venv/", "**/node_modules/", ".git/"]:
        if must not in ignore:
            fail(f".dockerignore (the build context of `docker build -f deploy/Dockerfile .`) does not exclude {must}")
    env = {}
    for i, a in stage:
        if i == "ENV":
            env.update(env_pairs(a))
    entry = [json.loads(a) for i, a in stage if i == "ENTRYPOINT"]
    cmd = [json.loads(a) for i, a in stage if i == "CMD"]
    if not entry or entry[-1][0] != "/usr/local/bin/duro":
        fail('Dockerfile: ENTRYPOINT is not ["/usr/local/bin/duro", ...]')
        return
    args = entry[-1][1:] + (cmd[-1] if cmd else [])
    exposed = sorted(int(p.split("/")[0]) for i, a in stage if i == "EXPOSE" for p in a.split())
    for key in ("DURO_LISTEN", "DURO_HTTP_LISTEN"):
        host = env.get(key, "127.0.0.1").rsplit(":", 1)[0]
        if host not in ("0.0.0.0", "[::]"):
            fail(f"Dockerfile: {key}={env.get(key)} is not reachable through `docker run -p` (bind 0.0.0.0)")
    # The image's file system: VOLUME directories become a temporary one owned like in the image.
    # (A VOLUME directory the image does not create is made by Docker, owned by root.)
    data = tmp / "image-volume"
    data.mkdir()
    if os.geteuid() == 0 and volumes and set(volumes) <= prepared:
        os.chown(data, uid, gid)
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    for k, v in env.items():
        for vol in volumes:
            if v.startswith(vol.rstrip("/") + "/"):
                v = str(data) + v[len(vol.rstrip("/")) :]
        run_env[k] = v
    # As documented in the Dockerfile's `docker run` line: a key and a token, since HTTP
    # and gRPC listen off loopback.
    run_env["DURO_SYSTEM_KEY"] = "0123456789abcdef0123456789abcdef"
    run_env["DURO_API_TOKEN"] = "fedcba9876543210fedcba9876543210"
    ports = exposed
    if not isolated():
        moved = {}
        for key in ("DURO_LISTEN", "DURO_HTTP_LISTEN"):
            if key in run_env and run_env[key] != "off":
                p = free_port()
                moved[listen_port(run_env[key])] = p
                run_env[key] = f"0.0.0.0:{p}"
        ports = [moved.get(p, p) for p in exposed]
    run_duro("Dockerfile ENTRYPOINT", duro, args, run_env, uid, gid, ports, data)


def self_signed_tls(tmp):
    """A throwaway CA-less certificate for "localhost": tls.crt, tls.key, ca.crt."""
    key, crt = tmp / "tls-check.key", tmp / "tls-check.crt"
    if not crt.exists():
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
                "-keyout",
                str(key),
                "-out",
                str(crt),
            ],
            check=True,
            capture_output=True,
        )
    return {"tls.crt": crt.read_text(), "tls.key": key.read_text(), "ca.crt": crt.read_text()}


def check_kubernetes(duro, tmp, image_user, manifests):
    for manifest in manifests:
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
        name = manifest.name
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        secrets = {}
        for sname, s in by_kind.get("Secret", {}).items():
            values = dict(s.get("stringData") or {})
            for k, v in (s.get("data") or {}).items():
                import base64

                values[k] = base64.b64decode(v).decode()
            secrets[sname] = values
        for dname, dep in by_kind.get("Deployment", {}).items():
            pod = dep["spec"]["template"]
            spec = pod["spec"]
            sa = spec.get("serviceAccountName")
            if sa and sa != "default" and sa not in by_kind.get("ServiceAccount", {}):
                fail(f"{name}: Deployment {dname} uses serviceAccountName {sa}, which the manifest does not define")
            for vol in spec.get("volumes", []):
                claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
                    fail(f"{name}: volume {vol['name']} claims {claim}, which the manifest does not define")
            for svc_name, svc in by_kind.get("Service", {}).items():
                sel = svc["spec"].get("selector", {})
                labels = pod["metadata"].get("labels", {})
                if sel and all(labels.get(k) == v for k, v in sel.items()):
                    named = {p.get("name") for c in spec["containers"] for p in c.get("ports", [])}
                    numbers = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
                    for p in svc["spec"]["ports"]:
                        t = p.get("targetPort", p["port"])
                        if t not in named and t not in numbers:
                            fail(f"{name}: Service {svc_name} targets port {t}, which no container of {dname} declares")
            for c in spec["containers"]:
                env = {}
                for e in c.get("env", []):
                    if "value" in e:
                        env[e["name"]] = str(e["value"])
                        continue
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        external_db = e["name"] == "DURO_DB" and os.environ.get("DURO_DEPLOY_PG_URL")
                        if external_db and ref["name"] not in secrets:
                            # An existing Secret the operator creates (the chart's examples).
                            env[e["name"]] = "postgres://from-an-existing-secret"
                            continue
                        if ref["name"] not in secrets or ref["key"] not in secrets[ref["name"]]:
                            fail(
                                f"{name}: {c['name']}: {e['name']} refers to secret {ref['name']} "
                                f"key {ref['key']}, not defined"
                            )
                            continue
                        env[e["name"]] = secrets[ref["name"]][ref["key"]]
                if "duro" not in c["image"]:
                    continue
                # The duro container: the image's user (fsGroup owns the volume), mounts as temp dirs.
                uid, gid = image_user
                ctx = spec.get("securityContext") or {}
                uid = (c.get("securityContext") or {}).get("runAsUser", ctx.get("runAsUser", uid))
                gid = ctx.get("fsGroup", gid)
                data = tmp / f"k8s-{manifest.stem}-{dname}-{c['name']}"
                data.mkdir()
                if os.geteuid() == 0:
                    os.chown(data, uid, gid)
                mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
                # Secret volumes become files (all mounts share the temp dir); placeholder
                # TLS material is replaced by a real self-signed certificate for "localhost".
                secret_volumes = {
                    v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v
                }
                for m in c.get("volumeMounts", []):
                    sname = secret_volumes.get(m["name"])
                    if sname is None:
                        continue
                    if sname not in secrets:
                        fail(f"{name}: {c['name']}: volume {m['name']} mounts secret {sname}, not defined")
                        continue
                    values = dict(secrets[sname])
                    if any("(replace)" in v for v in values.values()):
                        values.update(self_signed_tls(tmp))
                    for key, value in values.items():
                        f = data / key
                        f.write_text(value)
                        if os.geteuid() == 0:
                            os.chown(f, uid, gid)
                for k, v in list(env.items()):
                    for m in mounts:
                        if v.startswith(m.rstrip("/") + "/"):
                            env[k] = str(data) + v[len(m.rstrip("/")) :]
                args = list(c.get("command", [])[1:]) + list(c.get("args", []))
                ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
                wanted = set(ports.values())
                http_gets = []
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    p = ((c.get(probe) or {}).get("tcpSocket") or (c.get(probe) or {}).get("httpGet") or {}).get("port")
                    if p is not None:
                        wanted.add(ports.get(p, p) if isinstance(p, str) else p)
                    get = (c.get(probe) or {}).get("httpGet")
                    if get:
                        p = get["port"]
                        http_gets.append((ports.get(p, p) if isinstance(p, str) else p, get.get("path", "/")))
                if "DURO_LISTEN" in env:
                    wanted.add(listen_port(env["DURO_LISTEN"]))
                base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", **env}
                # A PostgreSQL rendering's database is the test server (DURO_DEPLOY_PG_URL), and
                # all its replicas run at once on that one task hub, as the pods would.
                replicas = 1
                if base_env.get("DURO_DB", "").startswith("postgres"):
                    if not os.environ.get("DURO_DEPLOY_PG_URL"):
                        fail(f"{name}: a PostgreSQL rendering needs DURO_DEPLOY_PG_URL (a server to run against)")
                        continue
                    base_env["DURO_DB"] = os.environ["DURO_DEPLOY_PG_URL"]
                    replicas = int(dep["spec"].get("replicas", 1))

                label = f"{name} {dname}/{c['name']}"

                def launch(
                    copy,
                    args=args,
                    base_env=base_env,
                    wanted=wanted,
                    http_gets=http_gets,
                    data=data,
                    label=label,
                    replicas=replicas,
                    uid=uid,
                    gid=gid,
                ):
                    args, run_env = list(args), dict(base_env)
                    if not isolated():
                        moved = {}
                        for i, a in enumerate(args):
                            if i > 0 and args[i - 1] in ("--http-listen", "--listen") and ":" in a:
                                p = free_port()
                                moved[listen_port(a)] = p
                                args[i] = f"{a.rsplit(':', 1)[0]}:{p}"
                        if "DURO_LISTEN" in run_env:
                            p = free_port()
                            moved[listen_port(run_env["DURO_LISTEN"])] = p
                            run_env["DURO_LISTEN"] = f"127.0.0.1:{p}"
                        wanted = {moved.get(p, p) for p in wanted}
                        http_gets = [(moved.get(p, p), path) for p, path in http_gets]
                    what = label + (f" replica {copy + 1}/{replicas}" if replicas > 1 else "")
                    run_duro(what, duro, args, run_env, uid, gid, sorted(wanted), data, http_gets)

                if replicas > 1 and isolated():
                    fail(f"{name}: {replicas} replicas share ports inside one network namespace; run without it")
                    continue
                threads = [threading.Thread(target=launch, args=(i,)) for i in range(replicas)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        ok(f"{name}: references resolved ({', '.join(f'{len(v)} {k}' for k, v in sorted(by_kind.items()))})")


def main():
    duro = Path(sys.argv[1]).resolve()
    manifests = [Path(m).resolve() for m in sys.argv[2:]] or sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    if isolated():
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    else:
        print("note: not in a private network namespace (needs root): listen ports moved to free ones")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        os.chmod(tmp, 0o755)
        check_dockerfile(duro, tmp)
        stage = parse_dockerfile(DEPLOY / "Dockerfile")
        user = [a for i, a in stage if i == "USER"][-1].partition(":")
        check_kubernetes(duro, tmp, (int(user[0]), int(user[2] or user[0])), manifests)
    if failures:
        print(f"deploy check: {len(failures)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print("deploy check: ok")


if __name__ == "__main__":
    main()
