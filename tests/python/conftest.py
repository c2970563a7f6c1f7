"""Fixtures for the Duro compatibility suite (official durabletask-python SDK vs. a real duro process).

Fixtures:

* ``sidecar``          - the session-wide shared duro process (fresh temp SQLite db).
* ``isolated_sidecar`` - a duro process private to one test, with its own db; use it
                         for tests that stop/restart the sidecar (``.restart()`` keeps
                         the same port and db file).
* ``client``           - a ``TaskHubGrpcClient`` connected to ``sidecar``.
* ``run_worker``       - ``with run_worker(orchestrators=[...], activities=[...]) as w:``
                         runs a ``TaskHubGrpcWorker`` against ``sidecar`` (or
                         ``address=...``) for the duration of the block.

Every test registers orchestrators/activities under names no other test uses and
uses fresh instance ids, so tests sharing one sidecar do not interfere.
When a test fails, the sidecar log lines written during that test are attached
to the failure report.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
from durabletask import client as dt_client
from durabletask import task as dt_task

# name -> test function that registered it (cross-test collisions are a test bug)
_REGISTERED_NAMES: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "restarts: test stops/restarts the sidecar process "
                                       "(skipped on the in-memory self-check backend)")
    config.addinivalue_line("markers", "duro_only: semantics the SDK's in-memory reference "
                                       "backend does not implement (skipped there)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if harness.backend_kind() != "inmemory":
        return
    skip = pytest.mark.skip(reason="not supported by the in-memory self-check backend")
    for item in items:
        if item.get_closest_marker("restarts") or (
                item.get_closest_marker("duro_only") and not os.environ.get("DURO_INMEMORY_RUN_ALL")):
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> list[str]:
    kind = harness.backend_kind()
    if kind == "inmemory":
        return ["duro compat: backend = SDK in-memory reference backend (self-check mode)"]
    return [f"duro compat: backend = {harness.duro_bin()}"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for label, sc, offset in getattr(item, "_duro_sidecars", []):
        if sc.log_path is None:
            continue
        text = sc.log_tail(offset)
        if text.strip():
            rep.sections.append((f"duro log ({label}, {rep.when})", text))


def _watch(request: pytest.FixtureRequest, label: str, sc: Any) -> None:
    watched = getattr(request.node, "_duro_sidecars", None)
    if watched is None:
        watched = []
        request.node._duro_sidecars = watched
    watched.append((label, sc, sc.log_size()))


def _new_sidecar(directory: Path) -> Any:
    if harness.backend_kind() == "inmemory":
        return harness.InMemorySidecar()
    return harness.SidecarProcess(db_path=directory / "duro.db", log_path=directory / "duro.log")


@pytest.fixture(scope="session")
def _shared_sidecar(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Any]:
    sc = _new_sidecar(tmp_path_factory.mktemp("duro-shared"))
    sc.start()
    yield sc
    rc = sc.stop()
    if sc.log_path is not None:
        tr = request.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"duro shared sidecar: exit code {rc} after SIGTERM"
                          f"{' (had to SIGKILL)' if sc.last_stop_was_kill else ''}; log: {sc.log_path}")


@pytest.fixture
def sidecar(_shared_sidecar: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    sc = _shared_sidecar
    if not sc.is_running():
        # A previous test crashed it; give the remaining tests a working process
        # (same db) instead of failing all of them for one bug.
        sc.stop()
        sc.start()
    _watch(request, "shared sidecar", sc)
    yield sc
    if not sc.is_running():
        pytest.fail(f"duro sidecar died during the test (exit code {sc.proc and sc.proc.returncode})",
                    pytrace=False)


@pytest.fixture
def isolated_sidecar(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    sc = _new_sidecar(tmp_path)
    _watch(request, "isolated sidecar", sc)  # before start(): report the whole log
    sc.start()
    try:
        yield sc
    finally:
        sc.stop()


@pytest.fixture
def client(sidecar: Any) -> Iterator[dt_client.TaskHubGrpcClient]:
    c = harness.make_client(sidecar.address)
    try:
        yield c
    finally:
        c.close()


def _check_names(fns: list[Callable[..., Any]]) -> None:
    for fn in fns:
        name = dt_task.get_name(fn)
        where = f"{fn.__module__}.{fn.__qualname__}"
        owner = _REGISTERED_NAMES.setdefault(name, where)
        if owner != where:
            pytest.fail(f"function name {name!r} is defined both as {owner} and {where}; "
                        f"give it a unique name so tests sharing a sidecar cannot steal each "
                        f"other's work items", pytrace=False)


@pytest.fixture
def run_worker(sidecar: Any) -> Callable[..., Any]:
    @contextlib.contextmanager
    def _run(*, orchestrators: list[Callable[..., Any]] = (),  # type: ignore[assignment]
             activities: list[Callable[..., Any]] = (),  # type: ignore[assignment]
             address: str | None = None, **kwargs: Any) -> Iterator[Any]:
        _check_names(list(orchestrators) + list(activities))
        with harness.running_worker(address or sidecar.address, orchestrators=orchestrators,
                                    activities=activities, **kwargs) as w:
            yield w

    return _run
