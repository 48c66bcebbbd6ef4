"""Three real nats-server processes on loopback, configured from the shipped template
(deploy/nats/nats-server.conf.template): each on free ports with its own JetStream directory, killable one
by one. Every wait is bounded -- generously: each returns as soon as its condition holds, so a busy machine
costs time, not a failure."""

from __future__ import annotations

import json
import shutil
import signal
import string
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.budget.broker import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "nats" / "nats-server.conf.template"
PARTITIONS = 4
READY_LIMIT_S = 60.0
START_ATTEMPTS = 3


def nats_server_binary() -> str:
    found = shutil.which("nats-server")
    if found is None:
        pytest.skip("nats-server is not installed (apt-get install -y nats-server)")
    return found


@dataclass
class NatsNode:
    """One node: its name, ports and directory, and its process while it runs."""

    name: str
    directory: Path
    client_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def route(self) -> str:
        return f"nats-route://127.0.0.1:{self.cluster_port}"

    def jsz(self) -> dict[str, object] | None:
        """The node's JetStream report, or None while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/jsz", timeout=1) as response:
                report: dict[str, object] = json.load(response)
                return report
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def jsz_streams(self) -> dict[str, str]:
        """Each stream this node knows of -> the name of its raft leader (empty while it has none)."""
        try:
            url = f"http://127.0.0.1:{self.http_port}/jsz?streams=true"
            with urllib.request.urlopen(url, timeout=2) as response:
                report = json.load(response)
        except (OSError, urllib.error.URLError, ValueError):
            return {}
        leaders: dict[str, str] = {}
        for account in report.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                cluster = stream.get("cluster") or {}
                leaders[stream["name"]] = cluster.get("leader", "")
        return leaders

    def take_fresh_ports(self) -> None:
        """New free ports, and a clean JetStream directory, for a node that could not start on its own."""
        self.client_port, self.mqtt_port = free_port(), free_port()
        self.cluster_port, self.http_port = free_port(), free_port()
        shutil.rmtree(self.directory / "jetstream", ignore_errors=True)

    def meta_leader(self) -> str | None:
        """The JetStream meta leader this node knows of, or None."""
        report = self.jsz()
        meta = report.get("meta_cluster") if report else None
        leader = meta.get("leader") if isinstance(meta, dict) else None
        return leader if isinstance(leader, str) and leader else None


@dataclass
class NatsCluster:
    """Three nodes in one JetStream cluster named `margins`, the mapping over PARTITIONS partitions."""

    directory: Path
    partitions: int = PARTITIONS
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = [NatsNode(f"n{index}", self.directory / f"n{index}") for index in range(3)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def running(self) -> list[NatsNode]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def write_config(self, node: NatsNode) -> Path:
        node.directory.mkdir(parents=True, exist_ok=True)
        config = string.Template(TEMPLATE.read_text()).substitute(
            server_name=node.name,
            host="127.0.0.1",
            client_port=node.client_port,
            mqtt_port=node.mqtt_port,
            cluster_port=node.cluster_port,
            http_port=node.http_port,
            routes=", ".join(other.route for other in self.nodes),
            store_dir=node.directory / "jetstream",
            partitions=self.partitions,
        )
        path = node.directory / "node.conf"
        path.write_text(config)
        return path

    def start(self) -> None:
        """Start the three nodes and wait for a JetStream meta leader. A free port can be taken by another
        process before its node binds it (the node then exits): every node is started again on fresh
        ports, up to START_ATTEMPTS times."""
        binary = nats_server_binary()
        for _attempt in range(START_ATTEMPTS):
            for node in self.nodes:
                config = self.write_config(node)
                log = node.directory / "server.log"
                node.proc = subprocess.Popen([binary, "-c", str(config), "-l", str(log)])
            try:
                for node in self.nodes:
                    wait_for_port(node.client_port, READY_LIMIT_S, alive=node.proc)
                    wait_for_port(node.mqtt_port, READY_LIMIT_S, alive=node.proc)
            except ProcessLookupError:  # it exited: a port was taken
                pass
            else:
                self.wait_for_meta_leader()
                return
            self.kill()
            for node in self.nodes:
                node.take_fresh_ports()
        logs = "\n".join(
            (node.directory / "server.log").read_text(errors="replace")[-2000:] for node in self.nodes
        )
        raise RuntimeError(f"the NATS cluster did not start in {START_ATTEMPTS} attempts:\n{logs}")

    def wait_for_meta_leader(self, limit_s: float = READY_LIMIT_S) -> str:
        """Until every running node names the same JetStream meta leader, itself running."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            running = self.running()
            leaders = {node.meta_leader() for node in running}
            names = {node.name for node in running}
            if len(leaders) == 1 and (leader := leaders.pop()) in names:
                return leader
            time.sleep(0.1)
        raise TimeoutError(f"the NATS cluster in {self.directory} had no JetStream leader within {limit_s}s")

    def busiest_node(self) -> NatsNode:
        """The running node leading the most of margins' streams (the lease bucket's included): losing it
        stalls the most."""
        leaders: dict[str, int] = {}
        for node in self.running():
            for name, leader in node.jsz_streams().items():
                if leader and name.startswith(("MARGINS_", "KV_")):
                    leaders[leader] = leaders.get(leader, 0) + 1
        name = max(leaders, key=leaders.__getitem__) if leaders else self.running()[0].name
        return next(node for node in self.nodes if node.name == name)

    def sigkill(self, node: NatsNode) -> None:
        """Kill one node the way a crash would: no goodbye to the others."""
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=30)
        node.proc = None

    def kill(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.kill()
                node.proc.wait(timeout=30)
                node.proc = None
