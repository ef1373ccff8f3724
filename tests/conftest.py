"""Storage backends for tests: every test that touches storage takes ``backend`` and so runs
once on SQLite and once on a real PostgreSQL (started here, once per session, on a private
unix socket and a 127.0.0.1 port; ``scripts/test`` makes sure its binaries are installed).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from meshscale.bench.pgserver import PgServer
from meshscale.configload import build_config
from meshscale.errors import MeshscaleError
from meshscale.storage.base import Storage

# Property-based fuzzing (tests/unit/test_fuzz_*.py): a bounded budget in every run; a long run
# with HYPOTHESIS_PROFILE=long (docs/security.md, "Fuzzing").
settings.register_profile("ci", max_examples=150, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=50_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_databases = itertools.count(1)


@dataclass
class Backend:
    """One storage backend, as a test configures it."""

    name: str  # the plugin name, which is also database.type
    database: dict[str, Any] = field(default_factory=dict)  # the config's ``database:`` section
    pg: PgServer | None = None

    def config(self, data_dir: Path, **extra: Any) -> Any:
        return build_config({"data_dir": str(data_dir), "database": self.database, **extra})

    def storage(self, data_dir: Path) -> Storage:
        """A storage opened through the plugin, as the server opens it."""
        if self.name == "sqlite":
            from meshscale.plugins.sqlite import open_sqlite

            return open_sqlite(self.config(data_dir))
        from meshscale.plugins.postgres import open_postgres

        return open_postgres(self.config(data_dir))

    def yaml(self) -> str:
        """The ``database:`` section as YAML lines (for config files of server processes)."""
        import yaml

        text: str = yaml.safe_dump({"database": self.database}, default_flow_style=False)
        return text


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL for the whole session (fails, never skips, without binaries)."""
    try:
        server = PgServer()
        server.start()
    except MeshscaleError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()


def new_pg_database(pg: PgServer, tcp: bool = False) -> dict[str, Any]:
    """A fresh database on ``pg``; its ``database:`` config section."""
    name = f"t{os.getpid()}_{next(_databases)}"
    pg.create_database(name)
    params = pg.params(tcp=tcp)
    return {"type": "postgres", "postgres": {
        "host": params["host"], "port": params["port"], "name": name, "user": params["user"]}}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", {"type": "sqlite"})
    pg: PgServer = request.getfixturevalue("pg_server")
    return Backend("postgres", new_pg_database(pg), pg)
