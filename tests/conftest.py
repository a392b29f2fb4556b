"""Database fixtures: every test that asks for one runs once on SQLite and once on Postgres.

Postgres tests each get a fresh database on the server named by ``TEST_POSTGRES_URL``.
When that server cannot be reached they are skipped, except under CI (``CI=true``), where they
fail so that a broken CI service cannot pass silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from storage.db import make_engine, upgrade
from tests.net import AWS_REGION, free_port

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def _postgres_database() -> Iterator[str]:
    """A uniquely named, empty database on the test server; dropped afterwards."""
    server = make_url(PG_URL)
    admin = create_engine(
        server.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
    )
    name = f"drishtiksha_test_{uuid.uuid4().hex[:16]}"
    try:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except OperationalError as exc:
            message = f"PostgreSQL at {server.render_as_string()} is unreachable: {exc.orig}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# How the test process is scheduled when the session starts.
_SCHEDULING = os.sched_getscheduler(0)


@pytest.fixture(autouse=True)
def _scheduling_unchanged() -> Iterator[None]:
    """Fail the test after which the process runs on another scheduling policy: a library that
    leaves it on real-time scheduling (SVT-AV1's encoder does, as root) lets the threads it
    starts spin while the ones they wait for never run, and a later test hangs."""
    yield
    assert os.sched_getscheduler(0) == _SCHEDULING, "the process's scheduling policy changed"


@contextmanager
def _database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'drishtiksha.db'}"
    else:
        with _postgres_database() as url:
            yield url


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database (no migrations applied), disposed afterwards."""
    with _database(request.param, tmp_path) as url:
        eng = make_engine(url)
        try:
            yield eng
        finally:
            eng.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a database with migrations applied, for tests that start subprocesses."""
    with _database(request.param, tmp_path) as url:
        eng = make_engine(url)
        try:
            upgrade(eng)
        finally:
            eng.dispose()
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``database_url`` shared by a module's tests, for a daemon they share: pytest runs the
    module's tests backend by backend, so each backend's daemon starts once."""
    with _database(request.param, tmp_path_factory.mktemp("db")) as url:
        eng = make_engine(url)
        try:
            upgrade(eng)
        finally:
            eng.dispose()
        yield url


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """S3 + SQS emulator on a free loopback port, shared by a module's tests (every test uses
    its own bucket and queues)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Fake credentials the AWS way (environment), so nothing reads ~/.aws."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_AWS_REGION", AWS_REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_url


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos",
        type=int,
        default=2,
        help="kill -9 trials per database backend in tests/e2e/test_chaos.py (default 2)",
    )
    parser.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help="seed for the chaos test's choices of clips and kill moments (default: a fresh "
        "one, printed)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Each chaos trial restarts the daemon (minutes on a busy two-CPU machine): the
    # suite-wide timeout would cut a long run short.
    trials: int = config.getoption("--chaos")
    for item in items:
        if item.path.name == "test_chaos.py":
            item.add_marker(pytest.mark.timeout(600 + 400 * trials))
