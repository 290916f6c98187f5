"""Hostile rules in a running node (issue 15 items 6 and 7): a ReDoS pattern and a deeply nested rule file.

Before the fix, the 10,000-deep file made ``serve`` exit 1 at start, and
the nested-quantifier regex froze the main process for tens of seconds per
object whose Series Description was a run of ``a`` followed by ``!``
(doubling with each character).  Now the deep file is an error of its own
and the regex runs on RE2: both series below are forwarded by the
well-behaved rule as fast as any other.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from tests.node.conftest import forward_rule
from tests.peers import storescu, wait_for

pytestmark = pytest.mark.peers

REDOS_RULE = """
[[rule]]
name = "nested-quantifier"
[rule.match]
SeriesDescription = { regex = "(a+)+$" }
[[rule.actions]]
type = "forward"
destinations = ["archive"]
"""


def test_hostile_rules_neither_stop_the_node_nor_slow_routing(make_node, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    deep = "[[rule]]\nname = \"deep\"\n[rule.match]\nModality = " + "[" * 10_000 + "\"CT\"" + "]" * 10_000 + "\n"
    node = make_node(
        quiet_seconds=0.5,
        destinations={"archive": {"type": "folder", "path": str(archive)}},
        rules={"10-redos.toml": REDOS_RULE, "20-deep.toml": deep, "30-all.toml": forward_rule("archive")},
    )
    assert node.proc is not None and node.proc.poll() is None, "the node did not start with a deep rule file"
    evil = chest_ct_series(3, 32, seed=3)
    for ds in evil:
        ds.SeriesDescription = "a" * 40 + "!"  # 2**40 steps for a backtracking engine
    plain = chest_ct_series(3, 32, seed=4)
    started = time.monotonic()
    assert storescu(node.port, write_datasets(evil, tmp_path / "evil")).returncode == 0
    assert storescu(node.port, write_datasets(plain, tmp_path / "plain")).returncode == 0
    wait_for(lambda: len(list(archive.rglob("*.dcm"))) == 6, timeout=60, what="both series forwarded")
    assert time.monotonic() - started < 30, "routing was held up"
    log = node.log_text()
    assert "20-deep.toml" in log and "nested deeper than" in log
    assert "Traceback" not in log
