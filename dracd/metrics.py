"""Counters and gauges for operators: a dict increment on the hot path, read at scrape time.

Dependency-free. ``dracctl status`` gets every sample over STATUS3
(durations as integer microseconds); the optional Prometheus endpoint
(see ``dracd.app.prometheus``) reads the same registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One figure: ``name{label="value",...} value``; names ending in ``_us`` are microseconds."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: int

    @property
    def key(self) -> str:
        if not self.labels:
            return self.name
        return self.name + "{" + ",".join(f'{k}="{v}"' for k, v in self.labels) + "}"


@dataclass(slots=True)
class Counter:
    name: str
    help: str
    labelnames: Labels = ()
    values: dict[Labels, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.labelnames:
            self.values[()] = 0  # an unlabelled counter reads 0 before its first increment

    def inc(self, *labels: str, amount: int = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def get(self, *labels: str) -> int:
        return self.values.get(labels, 0)

    def samples(self) -> Iterator[Sample]:
        for labels, value in sorted(self.values.copy().items()):  # copy: read from other threads
            yield Sample(self.name, tuple(zip(self.labelnames, labels, strict=True)), value)


@dataclass(slots=True)
class Gauge:
    """A value set by the server, or read from ``read`` at scrape time."""

    name: str
    help: str
    value: int = 0
    read: Callable[[], int] | None = None

    def get(self) -> int:
        return self.read() if self.read is not None else self.value

    def samples(self) -> Iterator[Sample]:
        yield Sample(self.name, (), self.get())


@dataclass(slots=True)
class Timing:
    """Durations in microseconds: the last one, and a running sum and count."""

    name: str
    help: str
    last: int = 0
    sum: int = 0
    count: int = 0

    def observe(self, seconds: float) -> None:
        micros = max(0, round(seconds * 1e6))
        self.last = micros
        self.sum += micros
        self.count += 1

    def samples(self) -> Iterator[Sample]:
        yield Sample(f"{self.name}_last", (), self.last)
        yield Sample(f"{self.name}_sum", (), self.sum)
        yield Sample(f"{self.name}_count", (), self.count)


class Metrics:
    """Everything one dracd counts; one instance per Daemon."""

    def __init__(self) -> None:
        self.adds = Counter("adds_total", "ADD calls answered, by RPC version, transport and result",
                            ("version", "transport", "result"))
        self.refusals = Counter("refusals_total", "ADDs refused, by reason", ("reason",))
        self.rpc_errors = Counter("rpc_errors_total", "RPC-level errors and dropped messages, by kind", ("kind",))
        self.table_entries = Gauge("table_entries", "entries in the relay table")
        self.map_writes = Counter("map_writes_total", "map writes, by kind (full, incremental, failed)", ("kind",))
        self.map_write = Timing("map_write_us", "duration of map writes")
        self.map_lag = Gauge("map_lag_us", "last time from the oldest unwritten table change to the map on disk")
        self.expired = Counter("expired_total", "entries removed by expiry")

    def all(self) -> tuple[Counter | Gauge | Timing, ...]:
        return (self.adds, self.refusals, self.rpc_errors, self.table_entries, self.map_writes, self.map_write,
                self.map_lag, self.expired)

    def samples(self) -> list[Sample]:
        return [sample for metric in self.all() for sample in metric.samples()]

    def counters(self) -> list[tuple[str, int]]:
        """The figures as STATUS3 carries them: ``name{labels}`` and an unsigned integer."""
        return [(sample.key, sample.value) for sample in self.samples()]
