"""One line for a plugin whose module is missing: the extra that installs it, from the
installed distribution's own metadata."""

from __future__ import annotations

from meshscale.checks import explain, extra_for
from meshscale.errors import PluginError


def missing(module: str) -> PluginError:
    try:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)
    except ModuleNotFoundError as exc:
        try:
            raise PluginError("metrics", f"failed to import: {exc}") from exc
        except PluginError as err:
            return err


def test_extras_come_from_the_distribution_metadata() -> None:
    assert extra_for("prometheus_client") == "metrics"
    assert extra_for("psycopg") == "postgres"
    assert extra_for("yaml") is None  # a core dependency, in no extra
    assert extra_for("no_such_module") is None


def test_a_missing_module_names_the_install_command() -> None:
    assert explain(missing("prometheus_client.core")) == (
        "plugin 'metrics' needs the Python module 'prometheus_client', which is not installed: "
        "pip install 'meshscale[metrics]'")
    assert explain(missing("frobnicate")) == (
        "plugin 'metrics' needs the Python module 'frobnicate', which is not installed: install "
        "the distribution that provides 'frobnicate'")
    assert explain(PluginError("x", "boom")) == "plugin 'x': boom"
