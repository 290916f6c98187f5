"""Fixtures that run the real node against real peers."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.peers import NodeProcess

FORWARD_ALL = """
[[rule]]
name = "{name}"
level = "{level}"
[rule.match]
SOPInstanceUID = {{ present = true }}
[[rule.actions]]
type = "forward"
destinations = {destinations}
"""


def forward_rule(*destinations: str, level: str = "series", name: str = "forward-all") -> str:
    import json

    return FORWARD_ALL.format(destinations=json.dumps(list(destinations)), level=level, name=name)


@pytest.fixture
def make_node(tmp_path: Path) -> Callable[..., NodeProcess]:
    """Factory: a node process with the given destinations and rules; stopped at teardown."""
    started: list[NodeProcess] = []

    def factory(**kwargs) -> NodeProcess:  # type: ignore[no-untyped-def]
        node = NodeProcess(tmp_path / f"node{len(started)}", **kwargs)
        node.write_config()
        node.start()
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop()
