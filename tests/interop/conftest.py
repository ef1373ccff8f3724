from __future__ import annotations

import pytest

from tests.interop.realclients import NETNS_HINT, check_isolated


@pytest.fixture(scope="session", autouse=True)
def isolated_network() -> None:
    """Refuse to start any client outside a private network namespace (never fall back)."""
    problem = check_isolated()
    if problem is not None:
        pytest.fail(f"not isolated ({problem}). {NETNS_HINT}", pytrace=False)
