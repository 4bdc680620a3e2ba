"""Azurite for the export tests: one private instance per run, on a free loopback port (fails, never skips, if missing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.lab.azurite import AzuriteServer, azurite_binary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("azurite") for item in items) and azurite_binary() is None:
        raise pytest.UsageError(
            "Azurite is not installed: run the README's test command (make test), which installs it"
        )


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    server = AzuriteServer(tmp_path_factory.mktemp("azurite"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
