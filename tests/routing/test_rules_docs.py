"""The TOML examples in docs/rules.md load without errors and do what the text says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from routing_rules import RuleSet, SeriesHeaders, StudyHeaders, builtin_registry, parse_rules_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"
# every ```toml block that holds whole rules (fragments such as a lone [[rule.actions]] are skipped)
BLOCKS = [
    re.sub(r"(?m)^  ", "", b)
    for b in re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    if "[[rule]]" in b
]
DESTINATIONS = {"pacs", "archive"}
# Examples may use the node's `model` action type; a stand-in that accepts its keys checks them here.
REGISTRY = builtin_registry().with_type(
    "model", lambda params, ctx: {**params, "destinations": ctx.destinations_of(params, required=False)}
)


def doc_rules() -> RuleSet:
    rs = parse_rules_text("\n".join(BLOCKS), "docs/rules.md", DESTINATIONS, REGISTRY)
    assert not rs.errors, [str(e) for e in rs.errors]
    return rs


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_example_block_is_valid(block: str) -> None:
    rs = parse_rules_text(block, "docs/rules.md", DESTINATIONS, REGISTRY)
    assert rs.rules and not rs.errors, [str(e) for e in rs.errors]


def fired(headers: list[dict], level: str = "series") -> set[str]:
    rs = doc_rules()
    if level == "study":
        return {m.rule.name for m in rs.evaluate(StudyHeaders.from_instances(headers), level="study")}
    return {m.rule.name for m in rs.evaluate(SeriesHeaders(headers))}


def test_documented_behaviour() -> None:
    assert len(BLOCKS) >= 8
    names = {r.name for r in doc_rules().rules}
    assert len(names) == len(doc_rules().rules)
    ct_chest = fired([{"Modality": "CT", "BodyPartExamined": "chest", "SliceThickness": "1.0"}])
    assert {"ct-chest-to-pacs", "ct-chest", "ct-archive"} <= ct_chest and "archive-rest" not in ct_chest
    localizers = [{"Modality": "MR", "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "SeriesDescription": "3pl loc"}]
    assert "mr-no-localizer" not in fired(localizers)
    assert "mr-no-localizer" in fired([{"Modality": "MR", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL", "SeriesDescription": "ax t2"}])
    assert fired([{"Modality": "SR"}]) == {"skip-sr"}
    assert fired([{"Modality": "US"}]) == {"archive-rest"}
    study = [{"SeriesInstanceUID": "1", "Modality": "CT", "BodyPartExamined": "ABDOMEN"},
             {"SeriesInstanceUID": "2", "Modality": "PT", "BodyPartExamined": "CHEST"}]
    assert fired(study, level="study") == {"pet-ct-study"}
