"""Series-to-volume reading: slice order, geometry, warnings, refusals, and the way back to the series grid."""
from __future__ import annotations

from itertools import permutations, product

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms3d import Ellipsoid, make_series

from ai_models.errors import InputError
from ai_models.volume import AxisMap, read_volume

BLOB = Ellipsoid((6.0, -4.0, 3.0), (9.0, 6.0, 7.0), 300.0, 1)


def _series(**kwargs):
    args = dict(rows=20, cols=24, n_slices=12, pixel_spacing=(1.5, 1.25), slice_step=2.0, shapes=[BLOB])
    args.update(kwargs)
    return make_series(**args)


def _positions_along_normal(volume, datasets):
    by_uid = {ds.SOPInstanceUID: np.array(ds.ImagePositionPatient, dtype=float) for ds in datasets}
    return np.array([by_uid[u] @ volume.direction[:, 2] for u in volume.sop_instance_uids])


def test_shuffled_files_are_sorted_by_position_and_uids_follow_the_array():
    phantom = _series(shuffle_seed=3)
    assert [ds.InstanceNumber for ds in phantom.datasets] != sorted(ds.InstanceNumber for ds in phantom.datasets)
    volume = read_volume(phantom.datasets)
    assert volume.shape == (12, 20, 24)
    along = _positions_along_normal(volume, phantom.datasets)
    np.testing.assert_allclose(np.diff(along), 2.0, atol=1e-6)
    np.testing.assert_array_equal(volume.array, phantom.values_for(volume.sop_instance_uids))
    assert volume.spacing == pytest.approx((2.0, 1.5, 1.25))
    assert volume.warnings == []
    assert volume.voxel_volume_ml == pytest.approx(2.0 * 1.5 * 1.25 / 1000)


def test_reversed_positions_give_the_same_volume_as_the_forward_stack():
    forward = read_volume(_series(slice_step=2.0).datasets)
    reverse_phantom = _series(slice_step=-2.0, shuffle_seed=1)
    reverse = read_volume(reverse_phantom.datasets)
    # Same anatomy, same grid: the array must be identical, and it starts at the lowest position.
    np.testing.assert_array_equal(forward.array, reverse.array)
    np.testing.assert_allclose(forward.origin, reverse.origin, atol=1e-6)
    first = min(reverse_phantom.datasets, key=lambda ds: ds.ImagePositionPatient[2])
    assert reverse.sop_instance_uids[0] == first.SOPInstanceUID


def test_missing_slice_is_reported_and_spacing_is_the_median():
    volume = read_volume(_series(drop=[5], shuffle_seed=2).datasets)
    assert volume.shape[0] == 11
    assert volume.spacing[0] == pytest.approx(2.0)
    assert len(volume.warnings) == 1
    assert "gap of 4.00 mm" in volume.warnings[0] and "1 slice(s) missing" in volume.warnings[0]


def test_gantry_tilt_is_reported():
    # Each slice shifts 0.35 mm along y for a 2 mm step: about 10 degrees of shear.
    volume = read_volume(_series(shear_per_slice=(0.0, 0.35, 0.0)).datasets)
    tilt = [w for w in volume.warnings if "sheared" in w]
    assert len(tilt) == 1 and "9.9 degrees" in tilt[0]


def test_mixed_orientations_are_refused():
    axial = _series().datasets
    tilted = _series(col_dir=(0.0, 0.9659258, 0.2588190)).datasets
    for ds in tilted:
        ds.SeriesInstanceUID = axial[0].SeriesInstanceUID
    with pytest.raises(InputError, match="mixes slice orientations"):
        read_volume(axial[:6] + tilted[6:])


def test_single_slice_is_refused():
    with pytest.raises(InputError, match="at least 2"):
        read_volume(_series().datasets[0])


def test_duplicate_positions_are_refused():
    datasets = _series().datasets
    datasets[4].ImagePositionPatient = list(datasets[5].ImagePositionPatient)
    with pytest.raises(InputError, match="share a slice position"):
        read_volume(datasets)


def test_inconsistent_sizes_missing_geometry_and_several_series_are_refused():
    datasets = _series().datasets
    other = _series(rows=22).datasets
    other[0].SeriesInstanceUID = datasets[0].SeriesInstanceUID
    with pytest.raises(InputError, match="different sizes"):
        read_volume(datasets[:5] + other[:1])
    no_position = _series().datasets
    del no_position[3].ImagePositionPatient
    with pytest.raises(InputError, match="no ImagePositionPatient"):
        read_volume(no_position)
    no_orientation = _series().datasets
    del no_orientation[0].ImageOrientationPatient
    with pytest.raises(InputError, match="no ImageOrientationPatient"):
        read_volume(no_orientation)
    with pytest.raises(InputError, match="2 series"):
        read_volume(datasets + _series().datasets)


def test_stored_values_skip_the_rescale(tmp_path):
    phantom = _series()
    folder = phantom.write(tmp_path / "series")
    hu = read_volume(folder)
    stored = read_volume(str(folder), values="stored")
    np.testing.assert_array_equal(stored.array, hu.array + 1024.0)
    assert hu.array.dtype == np.float32 and hu.modality == "CT"
    assert hu.series_instance_uid == phantom.datasets[0].SeriesInstanceUID
    assert hu.frame_of_reference_uid == phantom.datasets[0].FrameOfReferenceUID


def test_axis_map_round_trips_every_permutation_and_flip():
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for order, flip in product(permutations(range(3)), product((False, True), repeat=3)):
        mapping = AxisMap(order, flip)
        canonical = mapping.apply(array)
        assert canonical.shape == mapping.shape(array.shape)
        np.testing.assert_array_equal(mapping.invert(canonical), array)


def test_canonical_layout_is_the_same_for_axial_sagittal_and_flipped_series():
    """One anatomy, three ways of storing it; canonical arrays must be identical (feet->head, A->P, R->L)."""
    shapes = [Ellipsoid((0.0, 0.0, 0.0), (14.0, 12.0, 1e4), 40.0), BLOB]
    common = dict(pixel_spacing=(1.5, 1.5), slice_step=1.5, shapes=shapes, shuffle_seed=4)
    axial = read_volume(make_series(rows=16, cols=20, n_slices=12, **common).datasets)
    # Columns toward patient right, rows toward anterior, stacked head to feet.
    flipped = read_volume(
        make_series(rows=16, cols=20, n_slices=12, row_dir=(-1, 0, 0), col_dir=(0, -1, 0), **common).datasets
    )
    # Sagittal: columns run anterior->posterior, rows head->feet, slices stacked toward the right.
    sagittal = read_volume(
        make_series(rows=12, cols=16, n_slices=20, row_dir=(0, 1, 0), col_dir=(0, 0, -1), **common).datasets
    )
    reference, spacing, mapping = axial.canonical()
    assert mapping.is_identity and spacing == pytest.approx((1.5, 1.5, 1.5))
    for other in (flipped, sagittal):
        array, _, mapping = other.canonical()
        assert not mapping.is_identity
        np.testing.assert_array_equal(array, reference)
        np.testing.assert_array_equal(mapping.invert(array), other.array)
    # The blob sits at patient left (x > 0): the right->left column axis puts it right of centre.
    columns = np.nonzero(reference > 100)[2]
    assert columns.mean() > reference.shape[2] / 2


def test_sitk_geometry_matches_the_image_positions():
    phantom = _series(row_dir=(-1, 0, 0), slice_step=-2.0, shuffle_seed=5)
    volume = read_volume(phantom.datasets)
    image = volume.to_sitk()
    by_uid = {ds.SOPInstanceUID: ds for ds in phantom.datasets}
    for k in (0, 7, 11):
        ds = by_uid[volume.sop_instance_uids[k]]
        row_dir = np.array(ds.ImageOrientationPatient[:3])
        col_dir = np.array(ds.ImageOrientationPatient[3:])
        expected = np.array(ds.ImagePositionPatient) + 5 * 1.25 * row_dir + 3 * 1.5 * col_dir
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((5, 3, k)), expected, atol=1e-6)


def test_a_mask_in_another_geometry_comes_back_onto_the_series_grid():
    phantom = _series(shuffle_seed=6)
    volume = read_volume(phantom.datasets)
    truth = phantom.truth_for(volume.sop_instance_uids)
    # The same mask stored flipped on every axis (direction negated, origin at the far corner) ...
    flipped = sitk.GetImageFromArray(truth[::-1, ::-1, ::-1].copy())
    flipped.SetSpacing(volume.to_sitk().GetSpacing())
    flipped.SetDirection(tuple((-volume.direction).flatten()))
    far = volume.to_sitk().TransformIndexToPhysicalPoint(tuple(int(s - 1) for s in reversed(volume.shape)))
    flipped.SetOrigin(far)
    np.testing.assert_array_equal(volume.resample_from_sitk(flipped), truth)
    # ... and on a finer, cropped grid: nearest neighbour brings it back but for boundary voxels.
    fine = sitk.Resample(
        volume.to_sitk(truth),
        [s * 2 for s in volume.to_sitk().GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        volume.to_sitk().TransformContinuousIndexToPhysicalPoint((-0.25, -0.25, -0.25)),
        [s / 2 for s in volume.to_sitk().GetSpacing()],
        tuple(volume.direction.flatten()),
    )
    back = volume.resample_from_sitk(fine)
    assert (back == truth).mean() > 0.99 and back.sum() > 0
