"""Radiograph display conversion: modality LUT, VOI, MONOCHROME1, output ranges (synthetic datasets)."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ai_models.chest.radiograph import (
    Window,
    apply_window,
    dataset_window,
    modality_image,
    radiograph_to_unit,
    scale_to,
    to_uint8,
)
from ai_models.errors import InputError


def make_radiograph(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs) -> Dataset:
    """An in-memory CR image with 16-bit unsigned stored values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


RAMP = np.arange(0, 4000, 250, dtype=np.uint16).reshape(4, 4)  # 0 .. 3750


def test_rescale_is_applied_before_anything_else():
    ds = make_radiograph(RAMP, RescaleSlope=2, RescaleIntercept=-100)
    np.testing.assert_allclose(modality_image(ds), RAMP * 2.0 - 100)


def test_min_max_without_voi_spans_zero_to_one():
    out = radiograph_to_unit(make_radiograph(RAMP), voi="none")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, RAMP / 3750.0, atol=1e-6)


def test_monochrome1_is_the_mirror_of_monochrome2():
    for voi in ("none", Window(2000, 2000, "LINEAR_EXACT")):
        mono2 = radiograph_to_unit(make_radiograph(RAMP, "MONOCHROME2"), voi=voi)
        mono1 = radiograph_to_unit(make_radiograph(RAMP, "MONOCHROME1"), voi=voi)
        np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
        # In MONOCHROME1 the lowest stored value is white: it must come out brightest.
        assert mono1[0, 0] == mono1.max() and mono2[0, 0] == mono2.min()


def test_explicit_linear_exact_window_clips_to_the_expected_values():
    values = np.array([[-500.0, -160.0, 40.0, 140.0, 240.0, 1000.0]])
    out = apply_window(values, Window(center=40, width=400, function="LINEAR_EXACT"))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 0.75, 1.0, 1.0]])


def test_linear_window_uses_the_dicom_half_pixel_convention():
    # PS3.3 C.11.2.1.2.1: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped at c - 0.5 -/+ (w - 1) / 2.
    out = apply_window(np.array([40.0, 39.5 - 199.5, 39.5 + 199.5, 39.5 + 200]), Window(40, 400))
    np.testing.assert_allclose(out, [0.5 / 399 + 0.5, 0.0, 1.0, 1.0])


def test_sigmoid_window():
    out = apply_window(np.array([40.0, 140.0]), Window(40, 400, "SIGMOID"))
    np.testing.assert_allclose(out, [0.5, 1 / (1 + np.exp(-1.0))])


def test_header_window_is_used_by_default_with_rescale():
    # Stored 0..3750, rescaled by -1000: window [0, 1000] in modality units <=> stored [1000, 2000].
    ds = make_radiograph(RAMP, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=500, WindowWidth=1000,
                         VOILUTFunction="LINEAR_EXACT")
    out = radiograph_to_unit(ds)
    expected = np.clip((RAMP - 1000.0) / 1000.0, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_second_header_window_can_be_chosen():
    ds = make_radiograph(RAMP, WindowCenter=[500, 2000], WindowWidth=[1000, 4000], VOILUTFunction="LINEAR_EXACT")
    assert dataset_window(ds, 1) == Window(2000, 4000, "LINEAR_EXACT")
    np.testing.assert_allclose(radiograph_to_unit(ds, voi_index=1), RAMP / 4000.0, atol=1e-6)
    with pytest.raises(InputError, match="index 2"):
        radiograph_to_unit(ds, voi_index=2)


def test_voi_lut_sequence_wins_over_the_window_and_is_scaled_by_its_bit_depth():
    item = Dataset()
    item.LUTDescriptor = [4, 1000, 8]  # 4 entries, first mapped value 1000, 8-bit output
    item.LUTData = [0, 51, 204, 255]
    ds = make_radiograph(RAMP, WindowCenter=100, WindowWidth=10)
    ds.VOILUTSequence = Sequence([item])
    out = radiograph_to_unit(ds)
    # stored < 1000 -> first entry; 1000..1003 -> entries; > 1003 -> last entry
    expected = np.where(RAMP < 1000, 0.0, np.where(RAMP == 1000, 0.0, 1.0))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    ds2 = make_radiograph(np.array([[1001, 1002]], dtype=np.uint16))
    ds2.VOILUTSequence = Sequence([item])
    np.testing.assert_allclose(radiograph_to_unit(ds2), [[0.2, 0.8]], atol=1e-6)


def test_no_window_in_the_header_falls_back_to_min_max():
    np.testing.assert_allclose(radiograph_to_unit(make_radiograph(RAMP)), RAMP / 3750.0, atol=1e-6)


def test_constant_image_gives_zeros_not_nan():
    out = radiograph_to_unit(make_radiograph(np.full((3, 3), 7, dtype=np.uint16)), voi="none")
    assert np.all(out == 0)


def test_output_range_helpers():
    unit = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    np.testing.assert_allclose(scale_to(unit, -1, 1), [-1, 0, 1])
    np.testing.assert_array_equal(to_uint8(unit), np.array([0, 128, 255], dtype=np.uint8))


def test_colour_images_and_bad_windows_are_refused():
    ds = make_radiograph(RAMP)
    ds.SamplesPerPixel = 3
    with pytest.raises(InputError, match="grayscale"):
        radiograph_to_unit(ds)
    with pytest.raises(ValueError):
        Window(40, 0.5)
    with pytest.raises(ValueError):
        Window(40, 10, "CUBIC")  # type: ignore[arg-type]
