"""From a model result to the DICOM objects a rule asked for.

Versioning of reruns (late instances, operator retries): every output kind
of one (source series, rule, model, model version) goes into ONE result
series whose Series Instance UID is derived from those four values, so a
rerun lands in the same series at the PACS.  Each run's objects get new SOP
Instance UIDs, Instance Number = run number, and the series description
says which run it is; with the ``replace`` late-instance policy the
description says the run replaces the earlier ones.  A viewer therefore
shows the newest run first and never two unrelated result series for the
same source.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ai_models.results import Classification, Detection, Segmentation
from dicom_node.outputs import build_erased_images, build_header_fix_copy, build_seg, build_sr, stable_uid

log = logging.getLogger("dicom_node.jobs.execute")


@dataclass(frozen=True)
class RunContext:
    """What identifies one run of one rule's model action on one source series."""

    uid_root: str
    rule_name: str
    model_version: str
    run: int
    replaces: bool


def _result_series(ctx: RunContext, sources: list[Dataset], result: Any, kind: str) -> tuple[str, str]:
    source_series = str(sources[0].SeriesInstanceUID)
    uid = stable_uid(ctx.uid_root, source_series, ctx.rule_name, result.model, ctx.model_version, kind)
    note = f" run {ctx.run}" + (" (replaces earlier runs)" if ctx.replaces and ctx.run > 1 else "") if ctx.run > 1 else ""
    return uid, note


def _restamp(ds: Dataset, series_uid: str, run: int, description: str) -> Dataset:
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = run
    ds.SeriesDescription = description[:64]
    return ds


def header_fix_values(result: Classification, header_field: str) -> dict[str, Any] | None:
    """The attribute values a confident header-fix finding implies, or None when it implies none.

    ContrastBolusAgent: "non-enhanced" removes a recorded agent; "enhanced"
    records one (the agent itself is unknown, so the value names the model).
    ViewPosition: PA or lateral (LL); "Others" implies nothing to write.
    """
    label = result.label.lower()
    has_agent = bool((result.header_value or "").strip())
    if header_field == "ContrastBolusAgent":
        if label.startswith("non"):
            return {"ContrastBolusAgent": None} if has_agent else None
        return None if has_agent else {"ContrastBolusAgent": f"CONTRAST (detected by {result.model})"[:64]}
    if header_field == "ViewPosition":
        if label == "pa":
            return {"ViewPosition": "PA"}
        if label.startswith("lat"):
            return {"ViewPosition": "LL"}
    return None


def build_outputs(
    sources: list[Dataset], results: list[Any], action: dict[str, Any], ctx: RunContext
) -> list[Dataset]:
    """Every object the action's ``outputs`` list asks for, for all results of one job."""
    wanted = set(action.get("outputs", []))
    out: list[Dataset] = []
    for result in results:
        wanted_uids = set(result.source_sop_instance_uids)
        used = [ds for ds in sources if str(ds.SOPInstanceUID) in wanted_uids] or sources
        if isinstance(result, Segmentation):
            seg = None
            if "seg" in wanted:
                uid, note = _result_series(ctx, used, result, "seg")
                seg = build_seg(used, result, uid_root=ctx.uid_root, algorithm_name=result.model, algorithm_version=result.model_version,
                                omit_empty_frames=bool(action.get("omit_empty_frames", False)))
                out.append(_restamp(seg, uid, ctx.run, f"{result.model} segmentation{note}"))
            if "sr" in wanted:
                uid, note = _result_series(ctx, used, result, "sr")
                out.append(_restamp(build_sr(used, result, uid_root=ctx.uid_root, seg=seg), uid, ctx.run, f"{result.model} report{note}"))
        elif isinstance(result, Detection):
            if "sr" in wanted:
                uid, note = _result_series(ctx, used, result, "sr")
                out.append(_restamp(build_sr(used, result, uid_root=ctx.uid_root), uid, ctx.run, f"{result.model} report{note}"))
            if "erased" in wanted and result.boxes:
                from ai_models.baselines.eraser import erase_boxes

                uid, note = _result_series(ctx, used, result, "erased")
                erased = {}
                for ds in used:
                    boxes = [b for b in result.boxes if b.sop_instance_uid in ("", str(ds.SOPInstanceUID))]
                    if boxes:
                        erased[str(ds.SOPInstanceUID)] = erase_boxes(np.asarray(ds.pixel_array), boxes)
                images = build_erased_images(used, result, erased, uid_root=ctx.uid_root)
                for image in images:
                    image.SeriesInstanceUID = uid
                    image.SeriesDescription = f"{used[0].get('SeriesDescription', '')} [L/R marker erased]{note}"[:64]
                out.extend(images)
        elif isinstance(result, Classification):
            if "sr" in wanted:
                uid, note = _result_series(ctx, used, result, "sr")
                out.append(_restamp(build_sr(used, result, uid_root=ctx.uid_root), uid, ctx.run, f"{result.model} report{note}"))
            if "corrected-copy" in wanted:
                out.extend(_corrected_copy(used, result, action, ctx))
    return out


def _corrected_copy(sources: list[Dataset], result: Classification, action: dict[str, Any], ctx: RunContext) -> list[Dataset]:
    from ai_models import get_info

    threshold = float(action.get("header_fix_threshold", 0.8))
    values = header_fix_values(result, get_info(result.model).header_fix or "")
    decision = "no correction"
    copies: list[Dataset] = []
    if result.agrees_with_header is False and result.confidence >= threshold and values:
        uid, note = _result_series(ctx, sources, result, "corrected")
        copies = build_header_fix_copy(sources, result, attribute_values=values, uid_root=ctx.uid_root)
        for copy in copies:
            copy.SeriesInstanceUID = uid
        decision = f"corrected copy with {values}"
    elif result.agrees_with_header is False:
        decision = f"disagreement below threshold {threshold:.2f} or nothing to write"
    log.info(
        "header fix %s on series %s: header %r, model says %r (p=%.3f): %s",
        result.model, sources[0].SeriesInstanceUID, result.header_value, result.label, result.confidence, decision,
    )
    return copies
