"""Metrics: the registry, the counters a real server keeps, and the two ways to read them
(STATUS3 / dracctl status, and the optional Prometheus endpoint)."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from dracclient.admin import AdminClient
from dracclient.cli import EX_OK
from dracclient.cli import main as dracctl
from dracclient.drac import AddStat
from dracclient.errors import RpcRefused
from dracclient.rpc import AcceptStat
from dracclient.rpccall import call
from dracd.app.cli import EX_CONFIG, EX_USAGE
from dracd.app.cli import main as dracd_main
from dracd.app.prometheus import MetricsUnavailable, require
from dracd.config import ConfigError, config_from_dict
from dracd.metrics import Metrics
from tests.fixtures.server import ServerThread, add_status, wait_for
from tests.fixtures.tools import free_port

Make = Callable[..., ServerThread]




def counters(server: ServerThread) -> dict[str, int]:
    admin = AdminClient(socket_path=str(server.config.admin_socket), prog=server.config.program)
    return {counter.name: counter.value for counter in admin.status().counters}


def scrape(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_registry_counts_with_label_tuples() -> None:
    metrics = Metrics()
    metrics.adds.inc("1", "udp", "ADD_SUCCESS")
    metrics.adds.inc("1", "udp", "ADD_SUCCESS")
    metrics.refusals.inc("rate")
    metrics.table_entries.read = lambda: 5
    metrics.map_write.observe(0.0015)
    metrics.map_write.observe(0.0005)
    metrics.expired.inc(amount=3)
    figures = dict(metrics.counters())
    assert figures['adds_total{version="1",transport="udp",result="ADD_SUCCESS"}'] == 2
    assert figures['refusals_total{reason="rate"}'] == 1
    assert figures["table_entries"] == 5
    assert (figures["map_write_us_last"], figures["map_write_us_sum"], figures["map_write_us_count"]) == (500, 2000, 2)
    assert figures["expired_total"] == 3 and figures["map_lag_us"] == 0
    assert Metrics().counters() == [("table_entries", 0), ("map_write_us_last", 0), ("map_write_us_sum", 0),
                                    ("map_write_us_count", 0), ("map_lag_us", 0), ("expired_total", 0)]


def test_a_real_server_counts_adds_refusals_errors_writes_and_expiry(
    make_server: Make, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dracd.allow").write_text("255.255.255.255 127.0.0.1\n")
    listen = f"127.0.0.1:{free_port()}"
    server = make_server(lifetime=1, metrics_listen=listen)
    assert add_status(server, "192.0.2.7") == AddStat.ADD_SUCCESS
    assert add_status(server, "2001:db8::7", transport="tcp") == AddStat.ADD_SUCCESS
    assert add_status(server, "192.0.2.8", source="127.0.0.2") == AddStat.ADD_PERM
    assert add_status(server, "0.0.0.0") == AddStat.ADD_UNKOWN
    with pytest.raises(RpcRefused) as info:
        call(("127.0.0.1", server.port), server.config.program, 1, 7, timeout=5)
    assert info.value.reply.accept_stat is AcceptStat.PROC_UNAVAIL

    assert wait_for(lambda: counters(server)["expired_total"] == 2, timeout=10)
    figures = counters(server)
    assert figures['adds_total{version="1",transport="udp",result="ADD_SUCCESS"}'] == 1
    assert figures['adds_total{version="2",transport="tcp",result="ADD_SUCCESS"}'] == 1
    assert figures['adds_total{version="1",transport="udp",result="ADD_PERM"}'] == 1
    assert figures['adds_total{version="1",transport="udp",result="ADD_UNKOWN"}'] == 1
    assert figures['refusals_total{reason="allow"}'] == 1
    assert figures['refusals_total{reason="not_unicast"}'] == 1
    assert figures['rpc_errors_total{kind="PROC_UNAVAIL"}'] == 1
    assert figures["table_entries"] == 0
    assert figures['map_writes_total{kind="full"}'] >= 1
    assert "map_writes_total{kind=\"failed\"}" not in figures
    writes = sum(v for k, v in figures.items() if k.startswith("map_writes_total"))
    assert figures["map_write_us_count"] == writes >= 3  # start-up, the two ADDs, expiry
    assert figures["map_write_us_sum"] >= figures["map_write_us_last"] > 0
    assert figures["map_lag_us"] > 0

    scraped = scrape(listen)

    def prom(name: str, **labels: str) -> float:
        return scraped[(name, frozenset(labels.items()))]

    assert prom("dracd_adds_total", version="1", transport="udp", result="ADD_SUCCESS") == 1
    assert prom("dracd_adds_total", version="1", transport="udp", result="ADD_PERM") == 1
    assert prom("dracd_refusals_total", reason="allow") == 1
    assert prom("dracd_rpc_errors_total", kind="PROC_UNAVAIL") == 1
    assert prom("dracd_expired_total") == 2
    assert prom("dracd_table_entries") == 0
    assert prom("dracd_map_writes_total", kind="full") == figures['map_writes_total{kind="full"}']
    assert prom("dracd_map_write_seconds_count") >= writes
    assert prom("dracd_map_write_seconds_sum") > 0 and prom("dracd_map_write_last_seconds") > 0
    assert prom("dracd_map_lag_seconds") > 0

    socket_args = ["--program", str(server.config.program), "-S", str(server.config.admin_socket), "status"]
    capsys.readouterr()
    assert dracctl([*socket_args, "--json"]) == EX_OK
    shown = json.loads(capsys.readouterr().out)["counters"]
    assert shown["expired_total"] == 2 and shown['refusals_total{reason="allow"}'] == 1
    assert dracctl(socket_args) == EX_OK
    out = capsys.readouterr().out
    assert "counters:" in out and "\n  expired_total 2\n" in out


def test_the_endpoint_stops_with_the_server(make_server: Make) -> None:
    listen = f"127.0.0.1:{free_port()}"
    server = make_server(metrics_listen=listen)
    assert ("dracd_table_entries", frozenset()) in scrape(listen)
    server.stop()
    with pytest.raises(OSError):
        scrape(listen)


def test_metrics_listen_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "dracd.yaml"
    assert config_from_dict({"metrics_listen": "127.0.0.1:9150"}, path).metrics_listen == "127.0.0.1:9150"
    assert config_from_dict({"metrics_listen": "[::1]:9150"}, path).metrics_listen == "[::1]:9150"
    assert config_from_dict({"metrics_listen": None}, path).metrics_listen is None
    for bad in ("127.0.0.1", "localhost:9150", "127.0.0.1:0", "127.0.0.1:http", 9150):
        with pytest.raises(ConfigError, match="metrics_listen"):
            config_from_dict({"metrics_listen": bad}, path)


def test_a_missing_prometheus_client_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MetricsUnavailable, match=r"dracd\[metrics\]"):
        require()
    config = tmp_path / "dracd.yaml"
    config.write_text(f"map:\n  path: {tmp_path / 'dracd.db'}\nmetrics_listen: 127.0.0.1:9150\n")
    assert dracd_main(["--check-config", "-c", str(config)]) == EX_CONFIG
    assert "dracd[metrics]" in capsys.readouterr().err
    assert dracd_main(["--check-config", "-c", str(config), "--metrics-listen", "nowhere"]) == EX_USAGE
