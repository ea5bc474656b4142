"""The optional Prometheus endpoint (``metrics_listen``): prometheus-client, imported only when used."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ..config import ConfigError
from ..metrics import Counter, Gauge, Metrics, Timing

log = logging.getLogger(__name__)

PREFIX = "dracd_"


class MetricsUnavailable(ConfigError):
    """metrics_listen is set but prometheus-client is not installed."""


def require() -> Any:
    """The prometheus_client module; MetricsUnavailable names the extra to install."""
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError:
        raise MetricsUnavailable(
            "metrics_listen needs prometheus-client: pip install 'dracd[metrics]'"
        ) from None
    return prometheus_client


def split_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (IPv6 in brackets) -> (addr, port); raises ValueError."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9150")
    return host.strip("[]"), int(port)


class Collector:
    """Reads a Metrics registry at scrape time; durations become seconds."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        core = require().core
        for metric in self.metrics.all():
            if isinstance(metric, Counter):
                family = core.CounterMetricFamily(PREFIX + metric.name, metric.help, labels=metric.labelnames)
                for labels, count in sorted(metric.values.copy().items()):  # atomic copy: the loop may add keys
                    family.add_metric(labels, count)
                yield family
            elif isinstance(metric, Timing):
                base = PREFIX + metric.name.removesuffix("_us")
                yield core.SummaryMetricFamily(base + "_seconds", metric.help, count_value=metric.count,
                                               sum_value=metric.sum / 1e6)
                yield core.GaugeMetricFamily(base + "_last_seconds", metric.help + " (the last one)",
                                             value=metric.last / 1e6)
            elif isinstance(metric, Gauge):
                if metric.name.endswith("_us"):
                    name, value = metric.name.removesuffix("_us") + "_seconds", metric.get() / 1e6
                else:
                    name, value = metric.name, float(metric.get())
                yield core.GaugeMetricFamily(PREFIX + name, metric.help, value=value)


class Endpoint:
    """An HTTP server (a thread of prometheus-client) serving one dracd's metrics."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        client = require()
        host, port = split_address(address)
        self.registry = client.CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(metrics))
        self._server, self._thread = client.start_http_server(port, addr=host, registry=self.registry)
        log.info("Prometheus metrics on http://%s/metrics", address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
