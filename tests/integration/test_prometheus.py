"""A real Prometheus server (Debian's ``prometheus``) scrapes the admin listener every second."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from ..support.network import free_port, proxy_connect, wait_for
from ..support.upstream import HoldingServer


@pytest.fixture
def prometheus(tmp_path: Path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (scripts/test installs Debian's package)")

    def start(target_port: int) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: dprl\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                assert proc.poll() is None, "prometheus exited"
                return False

        wait_for(ready, timeout=30, what="prometheus ready")
        return url

    started: list[subprocess.Popen] = []
    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


def query(url: str, promql: str) -> list[dict]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_the_open_connections_of_a_host(make_proxy, prometheus) -> None:
    holding = HoldingServer()
    admin_port = free_port()
    proxy = make_proxy(5, admin_port=admin_port)
    url = prometheus(admin_port)
    key = f"127.0.0.1:{holding.port}"
    promql = f'dprl_upstream_connections{{host="{key}"}}'

    def value() -> float | None:
        result = query(url, promql)
        return float(result[0]["value"][1]) if result else None

    held = [proxy_connect(proxy, key)[0] for _ in range(3)]
    holding.wait_active(3)
    wait_for(lambda: value() == 3, timeout=30, what="prometheus sees 3 open connections")
    assert query(url, 'up{job="dprl"}')[0]["value"][1] == "1"
    for sock in held:
        sock.close()
    holding.wait_active(0)
    wait_for(lambda: value() == 0, timeout=30, what="prometheus sees 0 open connections")
    opened = query(url, f'dprl_upstream_connections_opened_total{{host="{key}"}}')
    assert opened[0]["value"][1] == "3"
    holding.close()
