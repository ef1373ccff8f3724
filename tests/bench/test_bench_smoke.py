"""A small, short run of each benchmark scenario keeps the load generator working.

These assert that the generator measures what it says (every event observed, figures present);
the figures themselves come from `meshscale bench`, never from timed tests.
"""

from __future__ import annotations

import pytest

from meshscale.bench import churn, harness, policychange, scenarios

pytestmark = pytest.mark.asyncio


async def test_storm_small() -> None:
    out = await scenarios.storm(nodes=12, events=0)
    assert out["nodes"] == 12 and out["all_full_maps_s"] > 0
    assert out["bytes_received"] > 0 and out["server_cpu_s"] >= 0
    # The machine's side (core/bench/kernel.py): what a slow run is checked against.
    assert out["generator_user_s"] > 0 and out["generator_minflt"] >= 0
    assert "TCPMemoryPressures" in out["tcpext"] and "tcp_mem_peak_mb" in out


async def test_storm_with_autogroup_self_policy() -> None:
    out = await scenarios.storm(nodes=20, events=0, policy="self")
    assert out["policy"] == "autogroup:self" and out["all_full_maps_s"] > 0


async def test_fanout_small() -> None:
    out = await scenarios.fanout(nodes=10, events=5)
    assert out["events"] == 5 and out["latency_max_ms"] > 0
    # Each event reached all 9 peers as a patch; bytes per peer stay small.
    assert 0 < out["bytes_per_event_per_peer"] < 250


async def test_policy_small() -> None:
    out = await policychange.policy(nodes=20, events=1)
    assert out["affected_nodes"] == 4 and out["all_updated_s"] > 0


async def test_restrictive_policy_runs() -> None:
    # 32 members: users u0-u5 with three devices each (teams 0-5), two servers per team.
    out = await policychange.policy(nodes=32, events=1, policy="restrictive")
    # u0's three devices lose team 0's two servers, and those servers lose them.
    assert out["policy"] == "restrictive" and out["affected_nodes"] == 5
    fan = await scenarios.fanout(nodes=32, events=6, policy="restrictive")
    assert fan["policy"] == "restrictive" and fan["latency_max_ms"] > 0
    mem = await scenarios.memory(nodes=16, events=0, policy="restrictive")
    assert mem["policy"] == "restrictive" and mem["server_rss_mb"] > 0


async def test_churn_small() -> None:
    out = await churn.churn(nodes=10, events=20, rate=20.0)
    assert out["failed_events"] == 0 and out["latency_max_ms"] > 0


async def test_memory_small() -> None:
    out = await scenarios.memory(nodes=8, events=0)
    assert [p["nodes"] for p in out["curve"]] == [2, 4, 6, 8]
    assert out["server_rss_mb"] > 0


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_register_small(database: str) -> None:
    out = await scenarios.register(nodes=20, events=0, database=database)
    assert out["database"] == database and out["nodes"] == 20
    assert out["registrations_per_s"] > 0 and out["cold_start_s"] > 0


async def test_storm_on_postgres() -> None:
    out = await scenarios.storm(nodes=12, events=0, database="postgres")
    assert out["nodes"] == 12 and out["all_full_maps_s"] > 0

async def test_soak_small() -> None:
    from meshscale.bench.soak import soak

    out = await soak(nodes=10, idle=30, loris=5, resetters=1, hoarders=1, ramp=2.0)
    assert out["legit_registered"] == 10 and out["legit_failed"] == {}
    assert out["update_reached_peers"] == out["update_expected_peers"] == 9
    assert out["server_log_tracebacks"] == 0
    seen = out["attacker_saw"]
    assert seen["reset_pairs_sent"] > 0 and seen.get("reset_goaway_ENHANCE_YOUR_CALM", 0) >= 1
    assert seen["idle_connections"] >= 30


async def test_floor_small() -> None:
    from meshscale.bench.floor import floor

    out = await floor(nodes=20, events=3)
    # Every record sealed and written reached its receiving socket: 2 rounds per event.
    assert out["bytes_received"] == 2 * 3 * 20 * out["record_bytes"]
    assert out["floor_us_per_recipient"] > 0 and out["seal_us_per_recipient"] > 0


async def test_shards_small() -> None:
    from meshscale.bench.shards import run

    out = run(nodes=20, events=3, workers=2)
    assert out["workers"] == 2 and out["wall_ms_per_event_median"] > 0
    assert out["workers_cpu_s_per_event"] > 0


async def test_bench_removes_its_server_directory() -> None:
    async with harness.Bench(["sqlite"]) as b:
        folder = b.server.dir
        assert (folder / "config.yaml").exists()
    assert not folder.exists()
