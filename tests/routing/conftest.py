"""routing_rules is tested as the standalone library it is."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from routing_rules.actions import default_registry


@pytest.fixture(autouse=True)
def library_action_types_only() -> Iterator[None]:
    """Hide action types a host registered in this process (the node's ``model``), and put them back after.

    The node's tests register ``model`` in the shared default registry; the
    library's tests register and remove their own and expect only ``forward``
    otherwise, whatever ran before them in the same pytest process.
    """
    saved = default_registry.copy()
    for name in saved.names():
        if name != "forward":
            default_registry.unregister(name)
    yield
    for name in default_registry.names():
        default_registry.unregister(name)
    for name, validator in saved._validators.items():  # noqa: SLF001 - restoring the registry exactly
        default_registry.register(name, validator)
