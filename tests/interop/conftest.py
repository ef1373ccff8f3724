from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.realclients import NETNS_HINT, check_isolated
from tests.interop.tailscaled import VERSION, Tailscaled


@pytest.fixture(scope="session", autouse=True)
def isolated_network() -> None:
    """Refuse to start any client outside a private network namespace (never fall back)."""
    problem = check_isolated()
    if problem is not None:
        pytest.fail(f"not isolated ({problem}). {NETNS_HINT}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"meshscale_report_{report.when}", report)
    return report


@pytest.fixture
def tailscale_version(request: pytest.FixtureRequest) -> str:
    """The tailscaled release a test's nodes run: VERSION, unless the test is parametrized
    (``@both_versions`` in tailscaled.py) to run against the older one too."""
    version: str = getattr(request, "param", VERSION)
    return version


@pytest.fixture
def tailscaled(request: pytest.FixtureRequest, tmp_path: Path,
               tailscale_version: str) -> Iterator[Callable[..., Tailscaled]]:
    """Makes real tailscaled nodes (not started) in the test's folder, of ``tailscale_version``;
    all are stopped after the test, and when it failed each one's log tail is printed with the
    failure."""
    made: list[Tailscaled] = []

    def make(name: str, **kwargs: Any) -> Tailscaled:
        kwargs.setdefault("version", tailscale_version)
        node = Tailscaled(tmp_path, name, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()
    report = getattr(request.node, "meshscale_report_call", None)
    if report is not None and report.failed:
        for node in made:
            print(f"--- tailscaled {node.name} {node.version} log tail ({node.log}):\n"
                  f"{node.log_tail(4000)}")
