"""Our SEGs through OHIF v3's own labelmap builder (@cornerstonejs/adapters 5.6.8 under Node).

OHIF 3.13.2 turns a SEG into the labelmap it draws with exactly this code, so
a frame placed on the wrong image, a flipped or transposed frame, a bit
packing error or a refused SEG here is what a radiologist would see there.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.viewer.cases import (
    F_SLICES,
    TUMOUR_SLICES,
    ViewerCase,
    ct_case,
    dx_case,
    shift_references,
)
from tests.viewer.labelmap_check import mismatches, node_missing_reason, run_seg_check

_MISSING = node_missing_reason()
pytestmark = [pytest.mark.peers, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> ViewerCase:
    return ct_case(tmp_path_factory.mktemp("viewer-ct"))


def _viewer_labelmap(case: ViewerCase, seg: Path | None = None) -> dict[str, np.ndarray | None]:
    shape = next(iter(case.expected.values())).shape
    started = time.monotonic()
    result = run_seg_check(seg or case.seg, case.sources, shape)
    print(f"{case.name}: adapter {result.adapter_ms:.0f} ms, node run {time.monotonic() - started:.1f} s")
    assert result.warnings == []  # e.g. "Image not present in stack, can't import frame"
    assert not result.overlapping
    assert result.segments == case.segment_labels
    assert {image.sop_instance_uid for image in result.images} == set(case.expected)  # one labelmap image per source
    return {image.sop_instance_uid: image.mask for image in result.images}


def _per_slice_report(case: ViewerCase, labelmap: dict[str, np.ndarray | None]) -> list[tuple[int, int, int]]:
    """(instance number, voxels shown, voxels expected) per source image, in instance order."""
    rows = []
    for uid, truth in case.expected.items():
        shown = labelmap[uid]
        rows.append((case.instance_numbers[uid], 0 if shown is None else int(np.count_nonzero(shown)), int(np.count_nonzero(truth))))
    return sorted(rows)


def test_ct_seg_labelmap_equals_the_mask_on_every_slice(ct: ViewerCase) -> None:
    labelmap = _viewer_labelmap(ct)
    report = _per_slice_report(ct, labelmap)
    print("instance shown expected:", report)
    assert mismatches(labelmap, ct.expected) == []
    # Spelled out: the F (and the tumour) sit exactly on their slices, nothing elsewhere.
    assert [instance for instance, shown, _ in report if shown] == [k + 1 for k in F_SLICES]
    assert [shown for _, shown, _ in report] == [expected for _, _, expected in report]
    with_tumour = sorted(ct.instance_numbers[uid] for uid, mask in labelmap.items() if mask is not None and (mask == 2).any())
    assert with_tumour == [k + 1 for k in TUMOUR_SLICES]


def test_ct_seg_without_empty_frames_is_placed_the_same(tmp_path: Path) -> None:
    """highdicom's omit_empty_frames: fewer frames, the same labelmap."""
    case = ct_case(tmp_path, omit_empty_frames=True)
    frames = int(pydicom.dcmread(case.seg, stop_before_pixels=True).NumberOfFrames)
    assert frames == len(F_SLICES) + len(TUMOUR_SLICES)
    assert mismatches(_viewer_labelmap(case), case.expected) == []


def test_negative_control_shifted_references_fail_the_check(ct: ViewerCase, tmp_path: Path) -> None:
    """A SEG whose frames reference the next slice (positions untouched) must be caught."""
    bad = shift_references(ct, tmp_path / "seg_shifted.dcm", by=1)
    labelmap = _viewer_labelmap(ct, bad)
    problems = mismatches(labelmap, ct.expected)
    print("negative control:", len(problems), "slices differ;", _per_slice_report(ct, labelmap))
    # Every slice whose mask differs from its neighbour's is flagged ...
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct.sources]
    changed = [k for k in range(len(uids)) if not np.array_equal(ct.expected[uids[k]], ct.expected[uids[k - 1]])]
    assert len(problems) == len(changed) > 0
    # ... because the viewer drew slice k's mask on slice k+1: the shift, not noise.
    for k, uid in enumerate(uids):
        shown = labelmap[uids[(k + 1) % len(uids)]]
        np.testing.assert_array_equal(np.zeros_like(ct.expected[uid]) if shown is None else shown, ct.expected[uid])


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> tuple[ViewerCase, Dataset]:
    return dx_case(tmp_path_factory.mktemp("viewer-dx"))


def test_dx_lung_seg_as_built_lands_on_the_radiograph(dx: tuple[ViewerCase, Dataset]) -> None:
    case, _ = dx
    assert mismatches(_viewer_labelmap(case), case.expected) == []


