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
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from ai_models.results import Classification, Detection, Segmentation
from dicom_node.outputs import CONTRAST_BOLUS_MODULE, build_erased_images, build_header_fix_copy, build_seg, build_sr, stable_uid
from dicom_node.outputs.common import box_source_uid, usable_spacing

log = logging.getLogger("dicom_node.jobs.execute")


_MISSING_ATTRIBUTE = re.compile(r"has no attribute '(\w+)'")
_SPACING = ("PixelSpacing", "ImagerPixelSpacing")


class OutputError(Exception):
    """Building one output failed: names the step, the source instance and the cause (never attribute values)."""

    def __init__(self, step: str, source_uid: str, cause: str) -> None:
        super().__init__(f"outputs/{step} for {source_uid}: {cause}")
        self.step, self.source_uid, self.cause = step, source_uid, cause


def _attribute_state(ds: Dataset, keyword: str) -> str:
    if keyword not in ds:
        return "absent"
    value = ds[keyword].value
    if value in (None, "", []):
        return "empty"
    if keyword in _SPACING and usable_spacing(value) is None:
        return "zero" if all(float(v) == 0 for v in value) else "unusable"
    return "present"


def _cause(exc: Exception, source: Dataset) -> str:
    """What went wrong, without values: a missing attribute by keyword (with the spacing state, if a spacing)."""
    missing = _MISSING_ATTRIBUTE.search(str(exc)) if isinstance(exc, AttributeError) else None
    if missing is None:
        return f"{type(exc).__name__}: {exc}"
    keyword = missing.group(1)
    cause = f"{keyword} absent"
    if keyword in _SPACING:
        other = _SPACING[1 - _SPACING.index(keyword)]
        cause += f" and {other} {_attribute_state(source, other)}"
    return cause


@contextmanager
def _step(step: str, sources: list[Dataset]) -> Iterator[None]:
    """Turn a builder's exception into an :class:`OutputError` naming ``step`` and the (first) source instance."""
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any builder failure gets the same context
        source = sources[0] if sources else Dataset()
        raise OutputError(step, str(source.get("SOPInstanceUID", "?")), _cause(exc, source)) from exc


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

    ContrastBolusAgent: "non-enhanced" removes a recorded agent with the whole
    Contrast/Bolus module (route, volume, times, dose, ingredient: left behind
    they still claim contrast); "enhanced" records an agent (the agent itself
    is unknown, so the value names the model).
    ViewPosition: PA or lateral (LL); "Others" implies nothing to write.
    """
    label = result.label.lower()
    has_agent = bool((result.header_value or "").strip())
    if header_field == "ContrastBolusAgent":
        if label.startswith("non"):
            return dict.fromkeys(CONTRAST_BOLUS_MODULE) if has_agent else None
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
                with _step("seg", used):
                    seg = build_seg(used, result, uid_root=ctx.uid_root, algorithm_name=result.model,
                                    algorithm_version=result.model_version,
                                    omit_empty_frames=bool(action.get("omit_empty_frames", False)))
                out.append(_restamp(seg, uid, ctx.run, f"{result.model} segmentation{note}"))
            if "sr" in wanted:
                out.append(_report(used, result, ctx, seg))
        elif isinstance(result, Detection):
            if "sr" in wanted:
                out.append(_report(used, result, ctx))
            if "erased" in wanted and result.boxes:
                out.extend(_erased(used, result, ctx))
        elif isinstance(result, Classification):
            if "sr" in wanted:
                out.append(_report(used, result, ctx))
            if "corrected-copy" in wanted:
                with _step("corrected-copy", used):
                    out.extend(_corrected_copy(used, result, action, ctx))
    return out


def _report(sources: list[Dataset], result: Any, ctx: RunContext, seg: hd.seg.Segmentation | None = None) -> Dataset:
    uid, note = _result_series(ctx, sources, result, "sr")
    with _step("sr", sources):
        sr = build_sr(sources, result, uid_root=ctx.uid_root, seg=seg)
    return _restamp(sr, uid, ctx.run, f"{result.model} report{note}")


def _erased(sources: list[Dataset], result: Detection, ctx: RunContext) -> list[Dataset]:
    """The erased images: each box is erased on the instance it names (by SOP Instance UID), never on the others."""
    from ai_models.baselines.eraser import erase_boxes

    uid, note = _result_series(ctx, sources, result, "erased")
    erased = {}
    for ds in sources:
        with _step("erased", [ds]):
            boxes = [b for b in result.boxes if box_source_uid(b, result) == str(ds.SOPInstanceUID)]
            if boxes:
                erased[str(ds.SOPInstanceUID)] = erase_boxes(np.asarray(ds.pixel_array), boxes)
    with _step("erased", sources):
        images = build_erased_images(sources, result, erased, uid_root=ctx.uid_root)
    for image in images:
        image.SeriesInstanceUID = uid
        image.SeriesDescription = f"{sources[0].get('SeriesDescription', '')} [L/R marker erased]{note}"[:64]
    return images


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
