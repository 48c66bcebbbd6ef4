"""Scrape a margins `/metrics` URL with a real Prometheus (Debian's `prometheus` package) and print a figure:

    uv run python -m benchmarks.prometheus_scrape http://127.0.0.1:8080/metrics
                                 [--query margins_events_committed_total] [--timeout 120]

Starts /usr/bin/prometheus (`apt-get install -y prometheus`) on a free loopback port with a temporary data
directory and one scrape job for the URL (every second), waits until the query returns a sample -- that is,
until Prometheus has scraped the target and stored what it read -- prints the value, and stops Prometheus.
Compare the figure with the store's (`margins spend`, or the store's last seq). tests/budget use
`Prometheus` against an in-process enforcer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

DEBIAN_BINARY = "/usr/bin/prometheus"
POLL_S = 0.2


class PrometheusError(Exception):
    """Prometheus is missing, did not start, or did not answer in time."""


def prometheus_binary() -> str:
    """The prometheus binary: Debian's, else the first on PATH."""
    found = DEBIAN_BINARY if Path(DEBIAN_BINARY).exists() else shutil.which("prometheus")
    if found is None:
        raise PrometheusError("prometheus is not installed: apt-get install -y prometheus")
    return found


def scrape_config(target_url: str) -> str:
    """A Prometheus configuration with one job scraping `target_url` every second."""
    target = urllib.parse.urlsplit(target_url)
    if target.scheme not in ("http", "https") or not target.hostname:
        raise PrometheusError(f"not an http(s) URL with a host: {target_url!r}")
    port = target.port or (443 if target.scheme == "https" else 80)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "margins",
                "scheme": target.scheme,
                "metrics_path": target.path or "/metrics",
                "static_configs": [{"targets": [f"{target.hostname}:{port}"]}],
            }
        ],
    }
    return json.dumps(config, indent=1)  # JSON is YAML: no YAML library needed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A Prometheus scraping `target_url`, as a context manager: started on entering (once ready), stopped
    and its data deleted on leaving."""

    def __init__(self, target_url: str, start_timeout_s: float = 120.0) -> None:
        self.target_url = target_url
        self.start_timeout_s = start_timeout_s
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="margins-prometheus-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        config = self._dir / "prometheus.yml"
        config.write_text(scrape_config(self.target_url))
        args = [
            prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={self._dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with (self._dir / "prometheus.log").open("wb") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=self._dir)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                waited = f"{self.start_timeout_s:.0f} s"
                raise PrometheusError(f"prometheus not ready in {waited}:\n{self.log_tail()}")
            time.sleep(POLL_S)

    def log_tail(self, lines: int = 20) -> str:
        """The end of Prometheus' own log, for error messages."""
        path = self._dir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant query's result vector (empty until a scrape has stored a matching series)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        if body.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {body}")
        result = body["data"]["result"]
        assert isinstance(result, list)
        return result

    def wait_for_value(self, expr: str, timeout_s: float = 120.0) -> float:
        """The value of `expr`'s one series, once Prometheus has scraped one; PrometheusError after
        `timeout_s` (naming the target's last scrape error, if any)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if len(result) == 1:
                return float(result[0]["value"][1])
            if len(result) > 1:
                raise PrometheusError(f"{expr!r} matches {len(result)} series; make it match one")
            if time.monotonic() > deadline:
                raise PrometheusError(f"no sample of {expr!r} in {timeout_s:.0f} s; {self._target_health()}")
            time.sleep(POLL_S)

    def _target_health(self) -> str:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as answer:
            targets = json.load(answer)["data"]["activeTargets"]
        return "; ".join(f"{t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}".strip() for t in targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="the /metrics URL to scrape, e.g. http://127.0.0.1:8080/metrics")
    parser.add_argument("--query", default="margins_events_committed_total", help="PromQL to print")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a sample")
    args = parser.parse_args(argv)
    try:
        with Prometheus(args.url) as prometheus:
            print(f"{args.query} = {prometheus.wait_for_value(args.query, args.timeout):g}")
    except PrometheusError as error:
        print(f"prometheus_scrape: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
