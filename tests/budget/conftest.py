"""Fixtures for the enforcer's tests: a real mosquitto on a free loopback port (tests/budget/broker.py),
`margins enforce` as a real subprocess (tests/budget/enforcer_process.py), and a three-node NATS
JetStream cluster (tests/budget/nats_cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.budget.broker import Broker
from tests.budget.enforcer_process import CAPS_TOML, EnforcerProcess
from tests.budget.nats_cluster import NatsCluster


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """An anonymous mosquitto with the shipped queueing and persistence settings."""
    broker = Broker(tmp_path / "broker", secured=False)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def secured_mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto with the shipped password file scheme and ACL (users app, admin, enforcer)."""
    broker = Broker(tmp_path / "secured-broker", secured=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-server processes in one JetStream cluster, from the shipped template; skipped without
    nats-server."""
    cluster = NatsCluster(tmp_path / "nats")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture
def caps_file(tmp_path: Path) -> Path:
    path = tmp_path / "caps.toml"
    path.write_text(CAPS_TOML)
    return path


@pytest.fixture
def enforcer_process(tmp_path: Path, mosquitto: Broker, caps_file: Path) -> Iterator[EnforcerProcess]:
    """An unstarted `margins enforce` on the anonymous broker; call .start()."""
    handle = EnforcerProcess(mosquitto, tmp_path / "store", caps_file, tmp_path / "enforcer.log")
    try:
        yield handle
    finally:
        handle.kill()
