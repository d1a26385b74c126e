"""The SDK's log settings against a real `kerve serve`: read, changed for every client of the process, refused
whole when one setting is wrong. Each test puts the shared server's settings back as it found them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from kerve.client import AsyncClient, Client, InvalidArgumentError

pytestmark = pytest.mark.integration

DEFAULTS = {
    "log_error": True,
    "log_file": "",
    "log_format": "default",
    "log_info": True,
    "log_verbose_level": 0,
    "log_warning": True,
}


@pytest.fixture
def client(server: str) -> Iterator[Client]:
    with Client(server) as client:
        before = client.log_settings()
        try:
            yield client
        finally:
            client.update_log_settings(before)


def test_settings_read_change_and_stay_changed_for_other_clients(client: Client, server: str) -> None:
    assert client.log_settings() == DEFAULTS
    after = client.update_log_settings({"log_info": False, "log_verbose_level": 2})
    assert after == {**DEFAULTS, "log_info": False, "log_verbose_level": 2}
    with Client(server) as other:
        assert other.log_settings() == after


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"log_info": False, "nope": True}, "unknown log setting 'nope'"),
        ({"log_info": False, "log_warning": 1}, "log setting 'log_warning' takes true or false, got 1"),
        ({"log_verbose_level": True}, "log setting 'log_verbose_level' takes an integer >= 0, got True"),
        ({"log_format": "XML"}, "log_format must be one of"),
    ],
)
def test_a_refused_setting_changes_nothing(client: Client, change: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        client.update_log_settings(change)
    assert client.log_settings() == DEFAULTS


def test_async_settings(client: Client, server: str) -> None:
    async def main() -> tuple[dict, dict]:
        async with AsyncClient(server) as aclient:
            changed = await aclient.update_log_settings({"log_format": "ISO8601"})
            return changed, await aclient.log_settings()

    changed, read = asyncio.run(main())
    assert changed == read == {**DEFAULTS, "log_format": "ISO8601"}
