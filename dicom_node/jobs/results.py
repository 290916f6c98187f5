"""What a finished model job records in ``jobs.result``, and what findings rules read from it.

The job writes a :class:`JobResult` (:meth:`JobResult.to_json`) and the
dispatcher reads it back (:meth:`JobResult.from_json`) to give findings
rules their ``finding.<model>.<key>`` fields (:meth:`ClassificationSummary.finding`),
so the key names live here and nowhere else.  The column is plain JSON an
operator can read; rows written before this module (classification
probability stored as ``confidence``) read back the same way, so no
migration was needed.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_models.results import Box, Classification, Detection, Segmentation


def _rounded(value: Any, digits: int = 4) -> float:
    return round(float(value), digits)


@dataclass(frozen=True)
class ClassificationSummary:
    """A label with its probability, and what the header said (header-fix models)."""

    label: str
    probability: float  # of ``label``
    probabilities: Mapping[str, float] = field(default_factory=dict)
    header_value: str | None = None
    agrees_with_header: bool | None = None

    kind = "classification"

    def finding(self) -> dict[str, Any]:
        """The keys rules read as ``finding.<model>.<key>`` (documented in docs/rules.md).

        Class probabilities are keyed by label in lower case
        (``probabilities.enhanced``), since rules compare labels without
        regard to case but look keys up exactly.
        """
        return {
            "label": self.label, "probability": self.probability,
            "probabilities": {name.lower(): value for name, value in self.probabilities.items()},
            "header_value": self.header_value, "agrees_with_header": self.agrees_with_header,
        }

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "probability": self.probability, "probabilities": dict(self.probabilities),
                "header_value": self.header_value, "agrees_with_header": self.agrees_with_header}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClassificationSummary:
        probability = data.get("probability", data.get("confidence"))  # "confidence": rows written before this module
        return cls(label=str(data.get("label", "")), probability=float(probability) if probability is not None else 0.0,
                   probabilities=dict(data.get("probabilities") or {}), header_value=data.get("header_value"),
                   agrees_with_header=data.get("agrees_with_header"))


@dataclass(frozen=True)
class BoxSummary:
    """One box and the instance it lies on: coordinates mean nothing without the image they are on."""

    label: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels
    sop_instance_uid: str = ""  # "" only in rows written before boxes named their instance


@dataclass(frozen=True)
class DetectionSummary:
    """The boxes, and the instances examined (an examined instance without a box had no marker)."""

    boxes: tuple[BoxSummary, ...] = ()
    source_sop_instance_uids: tuple[str, ...] = ()

    kind = "detection"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind,
                "boxes": [{"label": b.label, "score": b.score, "box": list(b.box), "sop_instance_uid": b.sop_instance_uid}
                          for b in self.boxes],
                "source_sop_instance_uids": list(self.source_sop_instance_uids)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DetectionSummary:
        boxes = []
        for b in data.get("boxes", []):
            x0, y0, x1, y1 = (float(v) for v in b.get("box", (0, 0, 0, 0)))
            boxes.append(BoxSummary(str(b.get("label", "")), float(b.get("score", 0.0)), (x0, y0, x1, y1),
                                    str(b.get("sop_instance_uid") or "")))
        return cls(tuple(boxes), tuple(str(u) for u in data.get("source_sop_instance_uids") or ()))


@dataclass(frozen=True)
class SegmentationSummary:
    labels: Mapping[str, str] = field(default_factory=dict)  # label value (as text, as JSON keys are) -> name
    volumes_ml: Mapping[str, float] = field(default_factory=dict)
    voxels: Mapping[str, int] = field(default_factory=dict)

    kind = "segmentation"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": dict(self.labels), "volumes_ml": dict(self.volumes_ml), "voxels": dict(self.voxels)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SegmentationSummary:
        return cls({str(k): str(v) for k, v in (data.get("labels") or {}).items()}, dict(data.get("volumes_ml") or {}),
                   dict(data.get("voxels") or {}))


ResultSummary = ClassificationSummary | DetectionSummary | SegmentationSummary
_BY_KIND: dict[str, Any] = {c.kind: c for c in (ClassificationSummary, DetectionSummary, SegmentationSummary)}


@dataclass(frozen=True)
class OutputRef:
    """One object the job wrote (and queued, if the action has destinations)."""

    sop_instance_uid: str
    modality: str


@dataclass(frozen=True)
class JobResult:
    """The ``result`` of a done job: one summary per model result, the objects written, the model that ran."""

    results: tuple[ResultSummary, ...] = ()
    outputs: tuple[OutputRef, ...] = ()
    model: str | None = None
    model_version: str | None = None

    @property
    def classification(self) -> ClassificationSummary | None:
        """The first classification: the one findings rules see."""
        return next((r for r in self.results if isinstance(r, ClassificationSummary)), None)

    def to_json(self) -> dict[str, Any]:
        return {"results": [r.to_json() for r in self.results],
                "outputs": [{"sop_instance_uid": o.sop_instance_uid, "modality": o.modality} for o in self.outputs],
                "model": self.model, "model_version": self.model_version}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> JobResult:
        """Read a stored result (None for a job that has none); entries of an unknown kind are skipped."""
        data = data or {}
        results = tuple(_BY_KIND[r["kind"]].from_json(r) for r in data.get("results", []) if r.get("kind") in _BY_KIND)
        outputs = tuple(OutputRef(str(o.get("sop_instance_uid", "")), str(o.get("modality", ""))) for o in data.get("outputs", []))
        return cls(results, outputs, data.get("model"), data.get("model_version"))


def _box_uid(box: Box, detection: Detection) -> str:
    """The box's own instance, or the detection's only one; "" when a box without one lies among several."""
    if box.sop_instance_uid or len(detection.source_sop_instance_uids) != 1:
        return box.sop_instance_uid
    return detection.source_sop_instance_uids[0]


def summarize(results: Iterable[Any]) -> tuple[ResultSummary, ...]:
    """The summaries of a model's results (:mod:`ai_models.results`), rounded for reading."""
    out: list[ResultSummary] = []
    for result in results:
        if isinstance(result, Classification):
            out.append(ClassificationSummary(
                label=result.label, probability=_rounded(result.confidence),
                probabilities={k: _rounded(v) for k, v in result.probabilities.items()},
                header_value=result.header_value, agrees_with_header=result.agrees_with_header,
            ))
        elif isinstance(result, Detection):
            out.append(DetectionSummary(tuple(
                BoxSummary(b.label, _rounded(b.score), (round(b.x0, 1), round(b.y0, 1), round(b.x1, 1), round(b.y1, 1)),
                           _box_uid(b, result))
                for b in result.boxes), tuple(result.source_sop_instance_uids)))
        elif isinstance(result, Segmentation):
            out.append(SegmentationSummary(
                labels={str(value): name for value, name in result.label_names.items()}, volumes_ml=dict(result.volumes_ml),
                voxels={name: int(np.count_nonzero(result.mask == value)) for value, name in result.label_names.items()},
            ))
    return tuple(out)
