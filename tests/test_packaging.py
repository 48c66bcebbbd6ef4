"""The wheel a user installs: what it holds, and what each install (core, enforce, sim) can run.

Each install goes into a fresh `python -m venv` with plain pip, run from outside the checkout, so nothing
of the repository or of the test environment leaks in. pip fetches the dependencies from the package
registry. On this project's machines (2 cores, load average about 4) the core test takes about 6 s, the
enforce one 15 s, and the sim one -- install, `margins init demo`, the seed story at 1,000 MAU -- about 30 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import grimp
import pytest

from sim.io.starter import starter_files

ROOT = Path(__file__).resolve().parents[1]
SEED_STORY = ("demo/seed-story/naive-mvp.toml", "demo/seed-story/optimized.toml")
# Installing and running the seed story waits on pip and the registry, not on a deadline of ours.
pytestmark = pytest.mark.timeout(1800)


# Where an import name differs from the name of the distribution that brings it.
DISTRIBUTION_OF = {
    "paho": "paho-mqtt",
    "genai_prices": "genai-prices",
    "prometheus_client": "prometheus-client",
    "nats": "nats-py",
}
# What the core install must run: what applications import, and the command shell with `init` and
# `prices` (which reads a caps config or a scenario file for their overrides).
CORE_PACKAGES = ("budget.domain", "budget.mqtt", "budget.integrations", "budget.alerts")
# The SDK guards: each needs its SDK's extra; the rest of budget.integrations is core.
SDK_EXTRAS = {
    "budget.integrations.openai": "openai",
    "budget.integrations.openai_responses": "openai",
    "budget.integrations.anthropic": "anthropic",
}
# Sweeps on a Dask cluster: only the module that drives Dask needs the cluster extra.
CLUSTER_MODULES = frozenset({"sim.workbench.dask_cluster"})
CORE_MODULES = frozenset(
    {
        *("budget", "budget.client", "budget.outbox", "budget.errors", "budget.cli"),
        *("budget.cli.alerts", "budget.cli.broker_options"),
        *("budget.service", "budget.service.settings", "budget.service.defaults"),
        *("sim", "sim.errors", "sim.cli", "sim.cli.extras", "sim.cli.common", "sim.cli.init"),
        *("sim.cli.prices",),
        *("sim.io", "sim.io.starter", "sim.io.scenarios", "sim.io.user_files"),
        *("sim.model", "sim.model.scenario", "sim.model.scenario_checks"),
    }
)


def declared() -> dict[str, set[str]]:
    """The distributions pyproject.toml lists: "core", and each extra on top of the core."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0] for requirement in requirements}

    core = names(project["dependencies"])
    return {"core": core} | {
        extra: core | names(requirements) for extra, requirements in project["optional-dependencies"].items()
    }


# The ledger keeps its state in numpy arrays: it runs in the enforcer and the simulator, whose extras both
# bring numpy; the rest of budget.domain (events, prices, config, commands) is what applications import.
LEDGER_MODULES = frozenset(
    f"budget.domain.{name}"
    for name in ("ledger", "retention", "seen", "snapshot", "state", "tallies", "users")
)


def install_for(module: str) -> str:
    """Which install must run `module`: the core, else its package's extra (`enforce` for the enforcer's
    modules and the ledger, `sim` for the simulator's, the SDK's for an SDK guard, `cluster` for Dask's,
    `nats` for budget.jetstream, both `enforce` and `nats` for the partitioned enforcer)."""
    if module in SDK_EXTRAS:
        return SDK_EXTRAS[module]
    if module in CLUSTER_MODULES:
        return "cluster"
    if module.startswith("budget.partitioned.") or module == "budget.partitioned":
        return "enforce+nats"  # the partitioned enforcer: `pip install 'margins[enforce,nats]'`
    if module.startswith("budget.jetstream.") or module == "budget.jetstream":
        return "nats"
    if module in LEDGER_MODULES:
        return "enforce"
    if module in CORE_MODULES or module.startswith(tuple(f"{package}." for package in CORE_PACKAGES)):
        return "core"
    return "enforce" if module.startswith("budget.") else "sim"


def test_every_module_imports_only_what_its_install_brings() -> None:
    """Every import of every module, at the top or inside a function, against pyproject.toml's lists (the
    semantic extra's packages are imported by name when called, and say how to install them)."""
    installs = declared()
    installs["enforce+nats"] = installs["enforce"] | installs["nats"]
    graph = grimp.build_graph(
        "budget", "sim", include_external_packages=True, exclude_type_checking_imports=True
    )
    ours = {module for module in graph.modules if module.split(".")[0] in ("budget", "sim")}
    wrong = []
    for module in sorted(ours):
        imported = {name.split(".")[0] for name in graph.find_modules_directly_imported_by(module)}
        third_party = {name for name in imported - {"budget", "sim"} if name not in sys.stdlib_module_names}
        needed = {DISTRIBUTION_OF.get(name, name) for name in third_party}
        install = install_for(module)
        if missing := needed - installs[install]:
            wrong.append(f"{module} ({install}) imports {sorted(missing)}")
    assert wrong == []
    assert install_for("sim.cli.forecast") == "sim" and install_for("budget.cli.spend") == "enforce"
    assert install_for("sim.cli.init") == "core" and install_for("budget.domain.events") == "core"
    assert install_for("budget.domain.ledger") == "enforce"
    assert install_for("budget.integrations.openai") == "openai"
    assert install_for("budget.integrations.thread") == "core"
    assert install_for("budget.jetstream.kv_lease") == "nats"
    assert install_for("budget.partitioned.door") == "enforce+nats"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def clean_environment() -> dict[str, str]:
    """This process's environment without what points into the test environment or the checkout."""
    leaking = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT"}
    return {key: value for key, value in os.environ.items() if key not in leaking}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH: the README's commands install it (pip install uv)"
    out = tmp_path_factory.mktemp("dist")
    ok(run(uv, "build", "--wheel", "--out-dir", out, ROOT, cwd=out, env=clean_environment()))
    (built,) = out.glob("margins-*.whl")
    return built


class Venv:
    """A fresh virtual environment, commands run in `home` (outside the checkout)."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.bin = root / "venv" / "bin"
        ok(run(sys.executable, "-m", "venv", root / "venv", cwd=self.home, env=clean_environment()))

    def install(self, requirement: str) -> None:
        ok(self.run("pip", "install", "--quiet", requirement))

    def run(
        self, program: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(self.bin / program, *args, cwd=self.home, env={**clean_environment(), **(env or {})})

    def has(self, module: str) -> bool:
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        return self.run("python", "-c", probe).returncode == 0


@pytest.fixture
def venv(tmp_path: Path) -> Venv:
    return Venv(tmp_path)


def test_the_wheel_holds_the_packages_the_starter_files_and_the_licence(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"budget", "sim", "margins-0.1.0.dist-info"}
    for name in ("budget/py.typed", "sim/py.typed"):
        assert name in names
    starter = {
        f"sim/_starter/scenarios/{path.relative_to(ROOT / 'scenarios').as_posix()}"
        for path in (ROOT / "scenarios").rglob("*")
        if path.is_file()
    }
    assert starter <= set(names)
    assert "sim/_starter/deploy/caps.example.toml" in names
    dist_info = zipfile.Path(wheel, "margins-0.1.0.dist-info/")
    assert (dist_info / "licenses/LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    metadata = (dist_info / "METADATA").read_text()
    for line in (
        "License-Expression: Apache-2.0",
        "Requires-Python: >=3.11\n",
        "Provides-Extra: enforce",
        "Provides-Extra: sim",
        "Provides-Extra: semantic",
        "Provides-Extra: openai",
        "Provides-Extra: anthropic",
        "Provides-Extra: cluster",
        "Provides-Extra: nats",
    ):
        assert line in metadata


def test_the_core_install_runs_the_shell_and_the_client_without_the_heavy_packages(
    wheel: Path, venv: Venv
) -> None:
    venv.install(str(wheel))
    for heavy in ("numpy", "duckdb", "pyarrow", "polars", "simpy", "matplotlib", "tqdm"):
        assert not venv.has(heavy), heavy
    listing = ok(venv.run("margins", "--help"))
    assert "init" in listing and "What MODELS are charged per 1M tokens" in listing
    imports = "import budget.client, budget.domain.commands, budget.domain.config; budget.client.BudgetClient"
    ok(venv.run("python", "-c", imports))
    ok(venv.run("python", "-c", "import budget.integrations.thread"))
    for sdk in ("openai", "anthropic"):
        assert not venv.has(sdk), sdk
        guard = venv.run("python", "-c", f"import budget.integrations.{sdk}")
        assert guard.returncode == 1
        needs = f"budget.integrations.{sdk} needs the {sdk} extra: pip install 'margins[{sdk}]'"
        assert guard.stderr.rstrip().endswith(needs), guard.stderr
    # Users' months are in their own time zones: with no system zone database, tzdata answers.
    check_zone = (
        "import zoneinfo; from budget.domain.config import check_timezone; assert zoneinfo.TZPATH == (); "
        "check_timezone('America/Los_Angeles', 'caps.toml', 'default_timezone')"
    )
    ok(venv.run("python", "-c", check_zone, env={"PYTHONTZPATH": ""}))

    written = ok(venv.run("margins", "init", "demo"))
    for file in starter_files(ROOT):
        copy = venv.home / "demo" / file.target
        assert copy.read_bytes() == file.source.read_bytes(), copy
        assert f"demo/{file.target}" in written
    assert "pip install 'margins[sim]'" in written
    # Prices come with the core install: the catalog, and a scenario's overrides on top of it.
    priced = ok(venv.run("margins", "prices", "gpt-4o", "--scenario", SEED_STORY[0]))
    assert priced.splitlines()[2].split() == ["gpt-4o", "any", "2.50", "1.25", "2.50", "10.00"]

    simulate = venv.run("margins", "simulate", SEED_STORY[0])
    assert (simulate.returncode, simulate.stderr) == (
        2,
        "margins simulate needs the sim extra: pip install 'margins[sim]'\n",
    )
    spend = venv.run("margins", "spend", "--store", "store")
    assert (spend.returncode, spend.stderr) == (
        2,
        "margins spend needs the enforce extra: pip install 'margins[enforce]'\n",
    )


WRITE_A_STORE = """
from datetime import UTC, datetime
from budget.domain.events import UsageRecorded
from budget.store.event_store import EventStore
with EventStore.open("store", flush_interval=None) as store:
    store.append([UsageRecorded(event_id="e1", user_id="u42", ts=datetime(2026, 11, 3, tzinfo=UTC),
        model="gpt-4o", input_tokens=1000, output_tokens=100, cost_nanos=3_500_000, month="2026-11")])
    store.flush()
"""


def test_the_enforce_extra_runs_the_store_and_spend_but_not_the_simulator(wheel: Path, venv: Venv) -> None:
    venv.install(f"{wheel}[enforce]")
    ok(venv.run("python", "-c", WRITE_A_STORE))
    ok(venv.run("python", "-c", "import budget.cli.enforce, budget.service.enforcer"))
    spent = ok(venv.run("margins", "spend", "--store", "store", "--month", "2026-11", "--format", "csv"))
    assert spent.splitlines()[1].startswith("u42,3500000,")
    simulate = venv.run("margins", "compare", *SEED_STORY)
    assert (simulate.returncode, simulate.stderr) == (
        2,
        "margins compare needs the sim extra: pip install 'margins[sim]'\n",
    )


def test_the_sim_extra_runs_the_seed_story_from_the_starter_files(wheel: Path, venv: Venv) -> None:
    """The path a new user takes: install, `margins init demo`, compare -- the same table as the checkout."""
    venv.install(f"{wheel}[sim]")
    init = ok(venv.run("margins", "init", "demo"))
    assert "pip install" not in init
    installed = ok(venv.run("margins", "compare", *SEED_STORY, "--mau", "1000"))
    checkout = run(
        sys.executable,
        "-m",
        "sim.cli",
        "compare",
        "scenarios/seed-story/naive-mvp.toml",
        "scenarios/seed-story/optimized.toml",
        "--mau",
        "1000",
        cwd=ROOT,
    )
    assert "naive-mvp -> optimized at 1,000 MAU: cost per session" in installed
    assert installed == ok(checkout)
