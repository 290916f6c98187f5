"""Turn a DICOM series into a 3-D volume with its geometry, and masks back into the series grid.

Slice order never comes from file order or Instance Number: every slice is
placed by projecting its Image Position (Patient) on the normal of the
shared Image Orientation (Patient).  The array is then ``(z, y, x)``:
``z`` runs along that normal, ``y`` down the rows, ``x`` along the columns,
and ``sop_instance_uids[k]`` names the image that gave ``array[k]``.  A mask
computed on the same grid therefore drops straight into a
:class:`ai_models.results.Segmentation`.

Models want anatomy in a fixed layout, not in whatever way the scanner
stored it, so :meth:`Volume.canonical` returns an :class:`AxisMap` that
permutes and flips the array into the patient (LPS) axes (axis 0 inferior
to superior, axis 1 anterior to posterior, axis 2 patient right to left:
the usual axial CT layout with the slices sorted feet to head).  The same
map undoes itself exactly, so a mask computed in canonical layout returns
to the series grid voxel for voxel.  For masks in any other physical grid
(resampled, cropped, rotated), :meth:`Volume.resample_from_sitk` maps them
back through patient coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from ai_models.errors import InputError
from ai_models.inputs import Source, modality_values, read_datasets

if TYPE_CHECKING:
    import SimpleITK as sitk

    from ai_models.results import Segmentation

ValueKind = Literal["hu", "stored"]

# Two slices closer than this along the normal are at the same position.
_DUPLICATE_TOL_MM = 1e-2
# Orientation cosines that differ by more than this are a different orientation.
_ORIENTATION_TOL = 1e-4
# A gap this many times the median slice step means slices are missing.
_GAP_FACTOR = 1.5
# Steps that vary by more than this fraction of the median are reported as uneven.
_UNEVEN_FRACTION = 0.1
# A slice stack sheared by more than this angle (degrees) is reported as tilted.
_TILT_DEGREES = 0.5


@dataclass(frozen=True)
class AxisMap:
    """A permutation plus flips that takes a ``(z, y, x)`` array into canonical layout and back.

    ``order[i]`` is the source axis that becomes canonical axis ``i``;
    ``flip[i]`` says whether canonical axis ``i`` is then reversed.  Only
    integer index operations are involved, so ``invert(apply(a))`` is ``a``.
    """

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Source layout -> canonical layout (a view where numpy allows)."""
        out = np.transpose(array, self.order)
        for axis, flipped in enumerate(self.flip):
            if flipped:
                out = np.flip(out, axis)
        return out

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Canonical layout -> source layout."""
        out = array
        for axis, flipped in enumerate(self.flip):
            if flipped:
                out = np.flip(out, axis)
        return np.transpose(out, np.argsort(self.order))

    def shape(self, source_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The canonical shape of an array of ``source_shape``."""
        return tuple(source_shape[a] for a in self.order)  # type: ignore[return-value]

    @property
    def is_identity(self) -> bool:
        return self.order == (0, 1, 2) and not any(self.flip)


@dataclass
class Volume:
    """A series as one array plus the geometry needed to map results back onto its images.

    ``spacing`` is (z, y, x) in mm; ``origin`` is the patient (LPS)
    position of voxel ``array[0, 0, 0]``; ``direction`` is the 3x3 matrix
    whose columns are the LPS unit vectors of increasing x (along a row),
    y (down a column) and z (slice normal): the SimpleITK convention.
    ``warnings`` lists what was odd but not fatal (missing slices, tilt,
    uneven spacing).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    sop_instance_uids: list[str]
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (mm^3 / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0

    def axis_map(self) -> AxisMap:
        """The permutation/flip that brings this volume closest to the LPS axes.

        Each array axis is paired with the patient axis its direction is
        most aligned with (the pairing that maximises the summed |cosine|),
        then flipped where it runs against that patient axis.  Oblique
        series get the nearest such layout; they are not resampled.
        """
        # Patient axis index (LPS x=0, y=1, z=2) wanted for canonical axes 0, 1, 2.
        wanted = (2, 1, 0)
        # Array axis a = (z, y, x) has direction column 2 - a.
        axis_dirs = [self.direction[:, 2 - a] for a in range(3)]
        best: tuple[float, tuple[int, int, int]] | None = None
        for perm in permutations(range(3)):
            score = sum(abs(axis_dirs[perm[i]][wanted[i]]) for i in range(3))
            if best is None or score > best[0] + 1e-9:
                best = (score, perm)  # type: ignore[assignment]
        order = best[1]  # type: ignore[index]
        flip = tuple(bool(axis_dirs[order[i]][wanted[i]] < 0) for i in range(3))
        return AxisMap(order=order, flip=flip)  # type: ignore[arg-type]

    def canonical(self) -> tuple[np.ndarray, tuple[float, float, float], AxisMap]:
        """Array in canonical layout (inferior->superior, anterior->posterior, right->left), its spacing, and the map."""
        mapping = self.axis_map()
        spacing = tuple(self.spacing[a] for a in mapping.order)
        return np.ascontiguousarray(mapping.apply(self.array)), spacing, mapping  # type: ignore[return-value]

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """This volume (or ``array`` on the same grid, e.g. a mask) as a SimpleITK image."""
        import SimpleITK as sitk

        data = self.array if array is None else array
        if tuple(data.shape) != self.shape:
            raise ValueError(f"array shape {data.shape} is not the volume grid {self.shape}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        image.SetSpacing((self.spacing[2], self.spacing[1], self.spacing[0]))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction.flatten()))
        return image

    def resample_from_sitk(self, image: sitk.Image, *, nearest: bool = True, default: float = 0.0) -> np.ndarray:
        """Sample ``image`` (any grid in the same frame of reference) onto this volume's grid.

        Used to bring a mask computed in a resampled, cropped or rotated
        geometry back onto the series: nearest neighbour keeps labels intact.
        """
        import SimpleITK as sitk

        reference = self.to_sitk(np.zeros(self.shape, dtype=np.float32))
        interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        out = sitk.Resample(image, reference, sitk.Transform(), interpolator, default, image.GetPixelID())
        return sitk.GetArrayFromImage(out)


def _required(ds: Dataset, keyword: str) -> Any:
    """The attribute's value, whatever pydicom holds for it (a number, a MultiValue...); missing or empty is an error."""
    value = getattr(ds, keyword, None)
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        uid = getattr(ds, "SOPInstanceUID", "?")
        raise InputError(f"instance {uid} has no {keyword}; cannot place it in a volume")
    return value


def _check_single_series(datasets: list[Dataset]) -> None:
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise InputError(f"input holds {len(series)} series; pass one series at a time")
    for ds in datasets:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputError(
                f"instance {getattr(ds, 'SOPInstanceUID', '?')} is multi-frame; only single-frame series are supported"
            )


def _common_orientation(datasets: list[Dataset]) -> np.ndarray:
    orientations = np.array([[float(v) for v in _required(ds, "ImageOrientationPatient")] for ds in datasets])
    if orientations.shape[1] != 6:
        raise InputError("ImageOrientationPatient must have 6 values")
    spread = np.abs(orientations - orientations[0]).max()
    if spread > _ORIENTATION_TOL:
        odd = orientations[np.abs(orientations - orientations[0]).max(axis=1).argmax()]
        raise InputError(
            f"series mixes slice orientations (e.g. {np.round(orientations[0], 4).tolist()} and "
            f"{np.round(odd, 4).tolist()}); cannot stack it as one volume"
        )
    return orientations[0]


def _common_grid(datasets: list[Dataset]) -> tuple[int, int, float, float]:
    sizes = {(int(_required(ds, "Rows")), int(_required(ds, "Columns"))) for ds in datasets}
    if len(sizes) > 1:
        raise InputError(f"slices have different sizes {sorted(sizes)}; cannot stack them as one volume")
    spacings = np.array([[float(v) for v in _required(ds, "PixelSpacing")] for ds in datasets])
    if np.abs(spacings - spacings[0]).max() > 1e-3 * spacings[0].max():
        raise InputError("slices have different PixelSpacing; cannot stack them as one volume")
    rows, cols = sizes.pop()
    return rows, cols, float(spacings[0][0]), float(spacings[0][1])


def _pixels(ds: Dataset, values: ValueKind, rows: int, cols: int) -> np.ndarray:
    if values == "hu":
        arr = modality_values(ds)
    else:
        try:
            arr = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - pixel decoders raise many types
            raise InputError(f"cannot decode pixels of {getattr(ds, 'SOPInstanceUID', '?')}: {exc}") from exc
    if arr.shape != (rows, cols):
        raise InputError(
            f"instance {getattr(ds, 'SOPInstanceUID', '?')} decodes to shape {arr.shape}, expected ({rows}, {cols}); "
            "colour or multi-sample images cannot form a volume"
        )
    return arr


def _geometry_warnings(positions: np.ndarray, steps: np.ndarray, normal: np.ndarray) -> list[str]:
    warnings: list[str] = []
    median = float(np.median(steps))
    gaps = np.nonzero(steps > _GAP_FACTOR * median)[0]
    for i in gaps:
        missing = int(round(steps[i] / median)) - 1
        warnings.append(
            f"gap of {steps[i]:.2f} mm between slices {i} and {i + 1} (median step {median:.2f} mm): "
            f"about {missing} slice(s) missing"
        )
    if not len(gaps) and steps.max() - steps.min() > _UNEVEN_FRACTION * median:
        warnings.append(
            f"uneven slice spacing ({steps.min():.2f} to {steps.max():.2f} mm); the volume uses the median {median:.2f} mm"
        )
    span = positions[-1] - positions[0]
    along = float(span @ normal)
    across = float(np.linalg.norm(span - along * normal))
    angle = float(np.degrees(np.arctan2(across, abs(along))))
    if angle > _TILT_DEGREES:
        warnings.append(
            f"slices are sheared by {angle:.1f} degrees against their normal (gantry tilt?); "
            f"the volume treats them as orthogonal, so positions drift by up to {across:.1f} mm across the stack"
        )
    return warnings


def read_volume(source: Source, *, values: ValueKind = "hu", min_slices: int = 2) -> Volume:
    """Read one series from ``source`` (anything :func:`read_datasets` takes) into a :class:`Volume`.

    ``values="hu"`` applies Rescale Slope/Intercept (HU for CT); ``"stored"``
    keeps the stored pixel values.  Raises :class:`InputError` for input
    that cannot be one volume: several series, multi-frame images, missing
    position/orientation/spacing, mixed orientations or sizes, two images
    at one position, or fewer than ``min_slices`` images.
    """
    if values not in ("hu", "stored"):
        raise ValueError(f"values must be 'hu' or 'stored', not {values!r}")
    datasets = read_datasets(source)
    _check_single_series(datasets)
    if len(datasets) < min_slices:
        raise InputError(f"series has {len(datasets)} image(s); a volume needs at least {min_slices}")
    orientation = _common_orientation(datasets)
    rows, cols, row_spacing, col_spacing = _common_grid(datasets)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    norm = np.linalg.norm(normal)
    if norm < 0.5:
        raise InputError(f"ImageOrientationPatient {orientation.tolist()} does not describe two perpendicular axes")
    normal = normal / norm

    positions = np.array([[float(v) for v in _required(ds, "ImagePositionPatient")] for ds in datasets])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    ordered = [datasets[i] for i in order]
    uids = [str(getattr(ds, "SOPInstanceUID", "")) for ds in ordered]

    steps = np.diff(along)
    duplicates = np.nonzero(steps < _DUPLICATE_TOL_MM)[0]
    if len(duplicates):
        i = int(duplicates[0])
        raise InputError(
            f"{len(duplicates)} pair(s) of images share a slice position (e.g. {uids[i]} and {uids[i + 1]} at "
            f"{along[i]:.2f} mm); several acquisitions or echoes in one series cannot form one volume"
        )
    warnings = _geometry_warnings(positions, steps, normal)
    array = np.stack([_pixels(ds, values, rows, cols) for ds in ordered]).astype(np.float32, copy=False)

    first = ordered[0]
    return Volume(
        array=array,
        spacing=(float(np.median(steps)), row_spacing, col_spacing),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=np.column_stack([row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir), normal]),
        sop_instance_uids=uids,
        series_instance_uid=str(getattr(first, "SeriesInstanceUID", "")),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")),
        modality=str(getattr(first, "Modality", "")),
        warnings=warnings,
    )


def segmentation_from_canonical(
    volume: Volume,
    canonical_mask: np.ndarray,
    mapping: AxisMap,
    *,
    model: str,
    model_version: str,
    label_names: dict[int, str],
    details: dict | None = None,
) -> Segmentation:
    """Wrap a label map computed in canonical layout as a Segmentation on the series' own images.

    The mask is mapped back through ``mapping`` so that frame ``k`` lies on
    ``volume.sop_instance_uids[k]``; ``volumes_ml`` counts each label's
    voxels times the voxel volume.
    """
    from ai_models.results import Segmentation

    mask = np.ascontiguousarray(mapping.invert(canonical_mask)).astype(np.uint8)
    if mask.shape != volume.shape:
        raise ValueError(f"mask maps back to {mask.shape}, the volume is {volume.shape}")
    counts = np.bincount(mask.ravel(), minlength=max(label_names, default=0) + 1)
    return Segmentation(
        model=model,
        model_version=model_version,
        mask=mask,
        label_names=dict(label_names),
        source_sop_instance_uids=list(volume.sop_instance_uids),
        spacing_mm=volume.spacing,
        volumes_ml={name: float(counts[label]) * volume.voxel_volume_ml for label, name in label_names.items()},
        details={"warnings": list(volume.warnings), **(details or {})},
    )


def require_modality(volume: Volume, model: str, modalities: tuple[str, ...]) -> None:
    """Refuse a series whose Modality is set and is not one the model was trained on."""
    if volume.modality and volume.modality not in modalities:
        raise InputError(f"{model} takes {', '.join(modalities)} series, got Modality {volume.modality}")
