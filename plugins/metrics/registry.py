"""The Prometheus metrics of one server, on their own CollectorRegistry.

Counters and histograms are fed by observe-only events; the gauges core and other plugins offer
through ``ServerContext.stats()`` are read at scrape time by ``StatsCollector``, so a scrape
always shows current values and nothing polls in between.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshscale import __version__
from meshscale.events import (
    MapKind,
    MapSent,
    MapStreamEvent,
    NodeEvent,
    PolicyEvent,
    Registration,
    UserEvent,
)

PREFIX = "meshscale_"

# Core's own stats() keys predate the "_total means counter" rule: they are gauges, exported
# under Prometheus names (a gauge never ends in _total).
CORE_GAUGES: Mapping[str, tuple[str, str]] = {
    "nodes_total": ("nodes", "Registered nodes."),
    "nodes_online": ("nodes_online", "Nodes with an open map stream."),
    "users_total": ("users", "Users."),
    "map_streams": ("map_streams", "Open map streams."),
}

# Registering takes a database write; building a map is in-memory work: different scales.
REGISTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


class StatsCollector(Collector):
    """Exports ``stats()`` at scrape time: core's gauges by name, plugin keys by convention."""

    def __init__(self, stats: Callable[[], Mapping[str, float]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        for key, value in sorted(self._stats().items()):
            if key in CORE_GAUGES:
                name, doc = CORE_GAUGES[key]
                yield GaugeMetricFamily(PREFIX + name, doc, value=value)
                continue
            name = PREFIX + _UNSAFE.sub("_", key)
            if key.endswith("_total"):
                # prometheus_client appends _total itself.
                yield CounterMetricFamily(name.removesuffix("_total"),
                                          f"{key}, from a plugin's meshscale_stats.", value=value)
            else:
                yield GaugeMetricFamily(name, f"{key}, from a plugin's meshscale_stats.",
                                        value=value)


class ServerMetrics:
    """Everything one server exports; ``on_*`` methods are called from the event hooks."""

    def __init__(self, stats: Callable[[], Mapping[str, float]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("meshscale_build", "meshscale version.", registry=r).info({"version": __version__})
        self.map_responses = Counter(
            "meshscale_map_responses", "Map messages queued to streams (one per stream).",
            ["kind"], registry=r)
        self.map_bytes = Counter(
            "meshscale_map_response_bytes", "Bytes of map messages queued, before Noise.",
            ["kind"], registry=r)
        self.map_seconds = Histogram(
            "meshscale_map_build_duration_seconds",
            "Time to build a map message (full: the whole map; delta: change to queued).",
            ["kind"], buckets=MAP_BUCKETS, registry=r)
        self.stream_opens = Counter(
            "meshscale_map_streams_opened", "Map streams opened.", registry=r)
        self.stream_closes = Counter(
            "meshscale_map_streams_closed", "Map streams closed.", registry=r)
        self.registrations = Counter(
            "meshscale_registrations", "/machine/register requests by method and result.",
            ["method", "result"], registry=r)
        self.register_seconds = Histogram(
            "meshscale_registration_duration_seconds", "Time to handle /machine/register.",
            ["method"], buckets=REGISTER_BUCKETS, registry=r)
        self.node_events = Counter(
            "meshscale_node_events", "Node lifecycle events by kind.", ["kind"], registry=r)
        self.user_events = Counter(
            "meshscale_user_events", "User events by kind.", ["kind"], registry=r)
        self.policy_reloads = Counter(
            "meshscale_policy_reloads", "Policy loads by source and result (ok, error).",
            ["source", "result"], registry=r)
        # Pre-create the label sets a dashboard expects so they read 0, not "no data".
        for kind in MapKind:
            self.map_responses.labels(kind.value)
            self.map_bytes.labels(kind.value)
        r.register(StatsCollector(stats))

    def on_map_sent(self, event: MapSent) -> None:
        kind = event.kind.value
        self.map_responses.labels(kind).inc(event.streams)
        self.map_bytes.labels(kind).inc(event.nbytes * event.streams)
        if event.kind is not MapKind.KEEPALIVE:
            self.map_seconds.labels(kind).observe(event.seconds)

    def on_map_stream(self, event: MapStreamEvent) -> None:
        (self.stream_opens if event.opened else self.stream_closes).inc()

    def on_registration(self, event: Registration) -> None:
        self.registrations.labels(event.method, event.result).inc()
        self.register_seconds.labels(event.method).observe(event.seconds)

    def on_node_event(self, event: NodeEvent) -> None:
        self.node_events.labels(event.kind.value).inc()

    def on_user_event(self, event: UserEvent) -> None:
        self.user_events.labels(event.kind.value).inc()

    def on_policy_event(self, event: PolicyEvent) -> None:
        self.policy_reloads.labels(event.source, "ok" if event.ok else "error").inc()
