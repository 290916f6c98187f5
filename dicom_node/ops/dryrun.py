"""Dry runs for the rule editor: which rules would fire for a stored or uploaded series, and why.

The rule being edited is evaluated together with the rules in force (its
saved version replaced by the draft), because ``stop`` and ``fallback``
make a rule's outcome depend on the others.  Headers come from the spool
files of a stored series (pixel data is not read) or from uploaded files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from dicom_node.db import Database, Series
from dicom_node.defaults import DRY_RUN_MAX_FILES
from dicom_node.ops import queries
from dicom_node.receive.headers import read_header
from routing_rules import RuleSet, SeriesHeaders, StudyHeaders


class DryRunError(ValueError):
    """The input cannot be dry-run (unknown series, unreadable upload)."""


@dataclass
class DryRunInput:
    """Headers of the series to test, grouped by SeriesInstanceUID, and of the whole study."""

    label: str
    series: dict[str, list[Dataset]]
    study: list[Dataset]
    notes: list[str] = field(default_factory=list)


def _read(paths: list[str]) -> tuple[list[Dataset], list[str]]:
    out: list[Dataset] = []
    problems: list[str] = []
    for path in paths:
        try:
            out.append(read_header(path))
        except Exception as exc:  # noqa: BLE001 - a spool file may have been cleaned up
            problems.append(f"cannot read {path}: {exc}")
    return out, problems


def from_stored_series(db: Database, series_id: int) -> DryRunInput:
    with db.session() as session:
        series = session.get(Series, series_id)
        if series is None:
            raise DryRunError(f"no stored series with id {series_id}")
        sibling_ids = [s.id for s in series.study.series]
        own = queries.item_paths(session, [series.id], DRY_RUN_MAX_FILES)
        study = queries.item_paths(session, sibling_ids, DRY_RUN_MAX_FILES)
        label = f"stored series {series.series_instance_uid} ({series.modality or '?'}, {series.instance_count} instance(s))"
        uid = series.series_instance_uid
    datasets, problems = _read(own)
    study_sets, _ = _read(study)
    if not datasets:
        raise DryRunError("none of the series' files could be read" + (f": {problems[0]}" if problems else ""))
    return DryRunInput(label, {uid: datasets}, study_sets, problems[:5])


def from_uploads(files: list[tuple[str, bytes]]) -> DryRunInput:
    series: dict[str, list[Dataset]] = {}
    problems = []
    for name, data in files[:DRY_RUN_MAX_FILES]:
        try:
            ds = read_header(data)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name}: not a readable DICOM file ({exc})")
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "(no SeriesInstanceUID)")), []).append(ds)
    if not series:
        raise DryRunError("; ".join(problems) or "no file uploaded")
    count = sum(len(v) for v in series.values())
    return DryRunInput(f"uploaded file(s): {count} instance(s) in {len(series)} series", series, [d for v in series.values() for d in v], problems[:5])


def with_candidate(current: RuleSet, candidate: Any) -> RuleSet:
    """The rules in force with ``candidate`` in place of its saved version, at its place in the order."""
    others = [r for r in current.rules if r.name != candidate.name]
    position = next((i for i, r in enumerate(others) if (r.order, r.name) > (candidate.order, candidate.name)), len(others))
    return RuleSet(rules=others[:position] + [candidate] + others[position:], errors=list(current.errors))


def explain(ruleset: RuleSet, data: DryRunInput, highlight: str | None = None) -> dict[str, Any]:
    """Explanations per series (series-level rules, then instance-level ones object by object) and for the study."""

    def rows(explanations: list[Any]) -> list[dict[str, Any]]:
        return [
            {"rule": e.rule.name, "status": e.status, "text": str(e), "candidate": e.rule.name == highlight,
             "actions": [a.to_dict() for a in e.rule.actions] if e.fired else []}
            for e in explanations if e.status != "other_level"
        ]

    out: dict[str, Any] = {"input": data.label, "notes": data.notes, "series": [], "study": []}
    for uid, datasets in data.series.items():
        instance_rules = []
        for explanation, fired in ruleset.explain_instances(datasets):
            row = rows([explanation])[0]
            row.update(text=f"instance level, fires for {fired} of {len(datasets)} object(s): {explanation}",
                       status="fired" if fired else explanation.status,
                       actions=[a.to_dict() for a in explanation.rule.actions] if fired else [])
            instance_rules.append(row)
        out["series"].append({"series_uid": uid, "instances": len(datasets),
                              "rules": rows(ruleset.explain(SeriesHeaders.from_datasets(datasets), level="series")) + instance_rules})
    if any(r.level == "study" for r in ruleset.rules):
        out["study"] = rows(ruleset.explain(StudyHeaders.from_instances(data.study), level="study"))
    fired_rules = [r["rule"] for s in out["series"] for r in s["rules"] if r["status"] == "fired"] + [r["rule"] for r in out["study"] if r["status"] == "fired"]
    out["fired"] = sorted(set(fired_rules))
    return out
