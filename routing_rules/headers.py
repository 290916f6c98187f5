"""Series and study views that rules are evaluated against.

A series is judged from the headers of *all* its instances, not from its
first file: a series whose first image is a localizer, or whose slice
thickness differs in a few images, would otherwise be routed by accident.
:class:`SeriesHeaders` holds one entry per instance, built either from
pydicom Datasets (read with ``stop_before_pixels=True`` to save memory) or
from stored header dicts; :class:`StudyHeaders` groups several series.

Header dicts may be keyed by keyword (``"Modality"``), by tag string
(``"(0008,0060)"``, ``"00080060"``) or by integer tag; values may be plain
(``"CT"``, ``["ORIGINAL", "PRIMARY"]``, ``"ORIGINAL\\PRIMARY"``, ``2.5``) or
DICOM JSON elements (``{"vr": "CS", "Value": ["CT"]}``).  Keys that are not
DICOM attributes are ignored.

Findings of header-fix models travel with the headers: a mapping model name
-> key -> value (``{"enhancement-hu": {"label": "enhanced", "probability":
0.97}}``), given once per series because a model judges the series as a
whole.  Every instance of the series sees the same findings.  A study may
carry study-level findings as well; each of its series sees them for the
models it has no findings of its own (the series' own findings win).  A model
"has findings" for a series as soon as its entry is in the mapping, even if
a key in it is ``None`` (the model ran and had nothing to say).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset

from routing_rules.fields import ABSENT, Field, Observed, ValueKind, observe, observe_finding, parse_tag

__all__ = ["SeriesHeaders", "StudyHeaders", "HeaderSource", "Findings"]

HeaderSource = Dataset | Mapping[Any, Any]
Findings = Mapping[str, Mapping[str, Any]]

_SERIES_UID_FIELD = Field(
    key="SeriesInstanceUID", tag=keyword_dict["SeriesInstanceUID"], keyword="SeriesInstanceUID", vr="UI", kind=ValueKind.TEXT
)
_MISSING = object()


class _DatasetInstance:
    """Reads attributes from a pydicom Dataset on demand (no copy of the data)."""

    __slots__ = ("_ds",)

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds

    def raw(self, tag: int) -> Any:
        ds: Dataset | None = self._ds
        if tag >> 16 == 0x0002:  # file meta lives apart from the data set
            ds = getattr(ds, "file_meta", None)
        if ds is None or tag not in ds:
            return None
        try:
            return ds[tag].value
        except Exception:  # a malformed value must not stop routing: fall back to raw bytes
            return ds.get_item(tag).value


class _MappingInstance:
    """A stored header dict, with keys normalised to integer tags once."""

    __slots__ = ("_values",)

    def __init__(self, header: Mapping[Any, Any]) -> None:
        values: dict[int, Any] = {}
        for key, value in header.items():
            tag = _key_to_tag(key)
            if tag is not None:
                values[tag] = _unwrap_json(value)
        self._values = values

    def raw(self, tag: int) -> Any:
        return self._values.get(tag)


def _key_to_tag(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str):
        if key in keyword_dict:
            return keyword_dict[key]
        return parse_tag(key)
    return None


def _unwrap_json(value: Any) -> Any:
    """DICOM JSON element -> its value list (or marker for binary content)."""
    if isinstance(value, Mapping) and "vr" in value:
        if "Value" in value:
            if value["vr"] == "PN":  # person names are objects: keep their alphabetic form
                return [v.get("Alphabetic", "") if isinstance(v, Mapping) else v for v in value["Value"]]
            return value["Value"]
        if "InlineBinary" in value or "BulkDataURI" in value:
            return b"\x01"  # present binary content; its bytes do not matter to rules
        return None
    return value


def _wrap(source: HeaderSource) -> _DatasetInstance | _MappingInstance:
    if isinstance(source, Dataset):
        return _DatasetInstance(source)
    if isinstance(source, Mapping):
        return _MappingInstance(source)
    raise TypeError(f"a header must be a pydicom Dataset or a mapping, not {type(source).__name__}")


def _copy_findings(findings: Findings | None) -> Mapping[str, Mapping[str, Any]]:
    """A read-only copy (two levels deep), checked for shape."""
    if findings is None:
        return MappingProxyType({})
    if not isinstance(findings, Mapping):
        raise TypeError(f"findings must be a mapping model -> key -> value, not {type(findings).__name__}")
    out: dict[str, Mapping[str, Any]] = {}
    for model, values in findings.items():
        if not isinstance(model, str) or not isinstance(values, Mapping):
            raise TypeError("findings must be a mapping model name -> mapping of key -> value")
        out[model] = MappingProxyType(dict(values))
    return MappingProxyType(out)


class SeriesHeaders:
    """The headers of every instance of one series, and the findings about it.

    Args:
        instances: pydicom Datasets and/or header dicts, one per instance.
        findings: what header-fix models found about the series, model name
            -> key -> value; ``None`` when no model has reported yet.

    Raises:
        ValueError: no instances were given (an empty series cannot match).
        TypeError: an item is neither a Dataset nor a mapping, or findings
            are not a mapping of mappings.
    """

    def __init__(self, instances: Iterable[HeaderSource], findings: Findings | None = None) -> None:
        self._instances = tuple(_wrap(i) for i in instances)
        if not self._instances:
            raise ValueError("a series needs at least one instance header")
        self._findings = _copy_findings(findings)

    @classmethod
    def from_datasets(cls, datasets: Iterable[Dataset], findings: Findings | None = None) -> SeriesHeaders:
        """Build from pydicom Datasets (e.g. ``dcmread(f, stop_before_pixels=True)``)."""
        return cls(datasets, findings)

    @classmethod
    def from_dicts(cls, headers: Iterable[Mapping[Any, Any]], findings: Findings | None = None) -> SeriesHeaders:
        """Build from stored header dicts (keyword or tag -> value, or DICOM JSON)."""
        return cls(headers, findings)

    def with_findings(self, findings: Findings | None) -> SeriesHeaders:
        """The same instances (not re-read) with these findings instead of the current ones."""
        other = object.__new__(SeriesHeaders)
        other._instances = self._instances
        other._findings = _copy_findings(findings)
        return other

    @property
    def findings(self) -> Mapping[str, Mapping[str, Any]]:
        """Model name -> key -> value, read-only."""
        return self._findings

    @property
    def finding_models(self) -> frozenset[str]:
        """The models that have reported findings for this series."""
        return frozenset(self._findings)

    def __len__(self) -> int:
        return len(self._instances)

    @property
    def series_uid(self) -> str:
        """SeriesInstanceUID of the first instance that has one, else ``""``."""
        for inst in self._instances:
            obs = _safe_observe(inst, _SERIES_UID_FIELD)
            if obs.values:
                return str(obs.values[0])
        return ""

    def observe(self, field: Field) -> list[Observed]:
        """The field's value in every instance, in instance order.

        A finding field gives the series' finding once per instance.
        """
        if field.finding is not None:
            return [observe_finding(self._findings, field)] * len(self._instances)
        return [_safe_observe(inst, field) for inst in self._instances]


def _safe_observe(inst: _DatasetInstance | _MappingInstance, field: Field) -> Observed:
    try:
        return observe(inst.raw(field.tag), field)
    except Exception:  # a header we cannot read at all is treated as lacking the field
        return ABSENT


class StudyHeaders:
    """The series of one study, each a :class:`SeriesHeaders`.

    Args:
        series: the series of the study (with their own findings, if any).
        findings: study-level findings (model name -> key -> value), for
            models that judge the study as a whole.  Every series sees them
            for the models it has no findings of its own.

    Raises:
        ValueError: no series were given.
    """

    def __init__(self, series: Iterable[SeriesHeaders], findings: Findings | None = None) -> None:
        given = tuple(series)
        if not given:
            raise ValueError("a study needs at least one series")
        self._findings = _copy_findings(findings)
        if self._findings:
            given = tuple(s.with_findings({**self._findings, **s.findings}) for s in given)
        self._series = given

    @classmethod
    def from_instances(
        cls,
        instances: Iterable[HeaderSource],
        findings: Findings | None = None,
        series_findings: Mapping[str, Findings] | None = None,
    ) -> StudyHeaders:
        """Group instance headers into series by SeriesInstanceUID (order kept).

        Args:
            instances: every instance header of the study.
            findings: study-level findings.
            series_findings: SeriesInstanceUID -> that series' findings.
        """
        groups: dict[str, list[HeaderSource]] = {}
        for source in instances:
            uid = SeriesHeaders([source]).series_uid
            groups.setdefault(uid, []).append(source)
        per_series = series_findings or {}
        return cls((SeriesHeaders(group, per_series.get(uid)) for uid, group in groups.items()), findings)

    @property
    def series(self) -> tuple[SeriesHeaders, ...]:
        """The series, each carrying its own findings plus the study-level ones it lacks."""
        return self._series

    @property
    def findings(self) -> Mapping[str, Mapping[str, Any]]:
        """The study-level findings only (series findings are on each series)."""
        return self._findings

    @property
    def finding_models(self) -> frozenset[str]:
        """Models with findings anywhere in the study (study level or any series)."""
        return frozenset().union(*(s.finding_models for s in self._series))

    def __iter__(self) -> Iterator[SeriesHeaders]:
        return iter(self._series)

    def __len__(self) -> int:
        return len(self._series)

    def observe(self, field: Field) -> list[Observed]:
        """The field's value in every instance of every series (findings: each series' own)."""
        out: list[Observed] = []
        for series in self._series:
            out.extend(series.observe(field))
        return out
