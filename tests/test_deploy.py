"""The deployment files in deploy/: they parse, and they name the same services, ports and paths as one
another, as the shipped broker config and as `margins enforce`. (Docker is not needed: nothing is built.)"""

from __future__ import annotations

import ast
import ctypes
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from budget.cli.enforce import enforce
from budget.jetstream.partitions import PARTITIONED_PREFIXES, partition_subjects, partitioned_subject
from tests.budget.nats_cluster import NatsCluster, nats_server_binary
from tests.budget.store_helpers import spend_by_user_month, usage_events

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
REPO = DEPLOY.parent
UNIT = DEPLOY / "margins-enforcer.service"
# Flags the deployment files pass that `margins enforce` is gaining (the HTTP door: /metrics, /healthz).
COMING_FLAGS = {"--http"}
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def dockerfile_cmd() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert found is not None
    parsed: list[str] = yaml.safe_load(found.group(1))  # a JSON array is YAML too
    return parsed


def flag_values(args: list[str]) -> dict[str, str]:
    return {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}


def example_setting(key: str) -> str:
    for line in (DEPLOY / "mosquitto.conf.example").read_text().splitlines():
        if line.split(" ", 1)[0] == key:
            return line.split(" ", 1)[1]
    raise AssertionError(f"{key} is not in mosquitto.conf.example")


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        found[target] = source
    return found


def test_compose_runs_mosquitto_on_the_example_config_with_only_its_listener_and_data_path_changed(
    tmp_path: Path,
) -> None:
    broker = compose()["services"]["mosquitto"]
    volumes = mounts(broker)
    assert volumes["/etc/mosquitto/margins.conf.example"] == "./mosquitto.conf.example"
    assert volumes[example_setting("acl_file")] == "./mosquitto.acl.example"
    assert example_setting("password_file") in volumes
    shell = broker["command"][2].replace("$$", "$")  # compose's escape for a literal $
    example = tmp_path / "example.conf"
    shutil.copy(DEPLOY / "mosquitto.conf.example", example)
    written = tmp_path / "margins.conf"
    shell = shell.replace("/etc/mosquitto/margins.conf.example", str(example))
    shell = shell.replace("/tmp/margins.conf", str(written)).split(" && exec ")[0]
    subprocess.run(["sh", "-c", shell], check=True)
    before, after = example.read_text().splitlines(), written.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    data_dir = next(target for target, source in volumes.items() if source == "mosquitto-data")
    assert changed == [
        ("listener 1883 127.0.0.1", "listener 1883"),
        (
            f"persistence_location {example_setting('persistence_location')}",
            f"persistence_location {data_dir}/",
        ),
    ]
    assert "127.0.0.1:1883:1883" in broker["ports"]


def test_the_enforcer_in_compose_runs_the_image_command_against_the_compose_services() -> None:
    stack = compose()
    service = stack["services"]["enforcer"]
    assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert service["command"] == dockerfile_cmd()
    flags = flag_values(service["command"])
    known = {name for param in enforce.params for name in param.opts}
    assert set(flags) <= known | COMING_FLAGS
    assert set(flags) >= {"--broker", "--store", "--config", "--password-file"}
    broker = urlsplit(flags["--broker"])
    assert (broker.hostname, broker.port) == ("mosquitto", int(example_setting("listener").split()[0]))
    secret = Path(flags["--password-file"])
    assert secret.parent == Path("/run/secrets") and secret.name in service["secrets"]
    assert (DEPLOY / stack["secrets"][secret.name]["file"]).parent.name == "secrets"
    volumes = mounts(service)
    store_volume = next(target for target, source in volumes.items() if source == "margins-store")
    assert Path(flags["--store"]).parent == Path(store_volume)
    assert f'VOLUME ["{store_volume}"]' in (DEPLOY / "Dockerfile").read_text()
    assert (DEPLOY / volumes[flags["--config"]]).resolve() == DEPLOY / "caps.example.toml"
    assert service["stop_signal"] == "SIGTERM"
    named = {source for s in stack["services"].values() for source in mounts(s).values() if source[0] != "."}
    assert named == set(stack["volumes"])


def test_prometheus_scrapes_the_port_the_enforcer_serves_and_the_image_exposes() -> None:
    stack = compose()
    enforcer = stack["services"]["enforcer"]
    http_port = flag_values(enforcer["command"])["--http"].rsplit(":", 1)[1]
    assert f"EXPOSE {http_port}" in (DEPLOY / "Dockerfile").read_text()
    assert f"127.0.0.1:{http_port}/healthz" in enforcer["healthcheck"]["test"][-1]
    prometheus = stack["services"]["prometheus"]
    assert mounts(prometheus)["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": [f"enforcer:{http_port}"]}]


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: prometheus)")
    done = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_file_the_image_copies_from_the_checkout_exists_and_is_in_its_build_context() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    sources = [
        source
        for line in lines
        if line.startswith("COPY ") and "--from=" not in line
        for source in shlex.split(line)[1:-1]
    ]
    assert "budget" in sources and "uv.lock" in sources
    allowed = {
        line[1:].removesuffix("/**")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.rstrip("/").removeprefix("./") in allowed, source


def unit_settings() -> dict[str, list[str]]:
    """The unit's settings by key (a key may repeat), continuation lines joined."""
    text = UNIT.read_text().replace("\\\n", " ")
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_runs_the_enforcer_as_its_own_user_on_its_state_directory_and_stops_it_cleanly() -> None:
    settings = unit_settings()
    (exec_start,) = settings["ExecStart"]
    args = shlex.split(exec_start)
    assert args[1] == "enforce"
    flags = flag_values(args)
    known = {name for param in enforce.params for name in param.opts}
    assert set(flags) <= known | COMING_FLAGS
    assert Path(flags["--store"]).parent == Path("/var/lib") / settings["StateDirectory"][0]
    assert settings["User"] == ["margins"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["KillSignal"] == ["SIGTERM"]
    assert 30 <= int(settings["TimeoutStopSec"][0]) <= 300
    for key in (
        "NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
        "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "MemoryDenyWriteExecute",
    ):  # fmt: skip
        assert settings[key] == ["yes"], key
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / UNIT.name
    # verify wants ExecStart's program to exist: this checkout's margins stands in for /opt/margins'
    unit.write_text(
        UNIT.read_text().replace("/opt/margins/bin/margins", str(Path(sys.executable).parent / "margins"))
    )
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr


def _refuse_exec_gain() -> None:
    """In the child before exec: what MemoryDenyWriteExecute=yes enforces, as the kernel's own switch."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


ENFORCER_WORK = """
import mmap, sys
from pathlib import Path
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("writable and executable memory was allowed: the check would prove nothing")
except OSError:
    pass
import budget.cli.enforce, budget.service.enforcer
from budget.store.event_store import EventStore
from budget.store.queries import SpendReader
from tests.budget.store_helpers import usage_events
root = Path(sys.argv[1])
with EventStore.open(root, flush_interval=0.05) as store:  # segments written by the writer's child process
    store.append(usage_events(500))
print(SpendReader(root).top_spenders("2026-11", 3).rows)
"""


def test_the_enforcer_store_and_queries_run_without_writable_executable_memory(tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_probe_mdwe, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    env = dict(os.environ)
    env.update(value.partition("=")[::2] for value in unit_settings()["Environment"])
    done = subprocess.run(
        [sys.executable, "-c", ENFORCER_WORK, str(tmp_path / "store")],
        preexec_fn=_refuse_exec_gain, env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    spent = spend_by_user_month(usage_events(500))
    top = sorted(
        ((user, nanos) for (user, month), nanos in spent.items() if month == "2026-11"), key=lambda x: -x[1]
    )
    assert [row[:2] for row in ast.literal_eval(done.stdout)] == top[:3]


def _probe_mdwe() -> None:
    try:
        _refuse_exec_gain()
    except OSError:
        os._exit(3)


def test_the_nats_template_maps_exactly_the_subjects_budget_cluster_partitions_knows() -> None:
    """The server's mapping and budget.jetstream.partitions must agree on what is partitioned and where it
    goes, or a reader would look for a user in the wrong stream."""
    template = (DEPLOY / "nats" / "nats-server.conf.template").read_text()
    mapping = re.compile(
        r'^\s*"(margins\.[a-z.]+\.)\*": "margins\.part\.\{\{partition\(\$\{partitions\},1\)\}\}\.'
        r'([a-z]+)\.\{\{wildcard\(1\)\}\}"$',
        re.MULTILINE,
    )
    assert dict(mapping.findall(template)) == PARTITIONED_PREFIXES
    assert partitioned_subject(0, "usage", "u1").startswith(partition_subjects(0).removesuffix(">"))


def test_nats_server_accepts_the_template_filled_in(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "nats")
    config = cluster.write_config(cluster.nodes[0])
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout + result.stderr
