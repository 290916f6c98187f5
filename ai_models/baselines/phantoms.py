"""Synthetic phantoms: chest CT series and chest radiographs with burned-in L/R markers.

The project ships no patient data, so every model test needs images whose
truth is known by construction.  These generators draw a crude but
anatomically ordered chest (body, subcutaneous fat, lungs, spine with a dense
cortex around a cancellous core, sternum, ribs, heart, aorta, table) and
return real pydicom datasets, so that the readers, the slice sorting and the
rescale handling run exactly as they do on received studies.

Everything is driven by a ``numpy.random.Generator`` so that a test can draw
many different cases from one fixed seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from ai_models.baselines.lr_mark_classic import HERSHEY_FONTS
from ai_models.results import Box

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

# Attenuation of the tissues drawn in the CT phantom (HU).
AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 45.0
LUNG_HU = -850.0
CORTICAL_BONE_HU = 850.0
CANCELLOUS_BONE_HU = 240.0
TABLE_HU = 150.0


def _base_dataset(sop_class_uid: str, modality: str, study_uid: str, series_uid: str) -> Dataset:
    """A dataset with file meta and the identifying attributes every instance needs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    # Patient, study and equipment attributes a validator (dciodvfy) expects, with neutral values.
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "ai_models phantom"
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    return ds


# --------------------------------------------------------------------------- CT


@dataclass
class ChestCTPhantom:
    """A synthetic chest CT and its ground truth.

    ``hu`` is (slices, rows, cols) in order of increasing position along the
    slice normal; ``datasets`` hold the same slices, possibly shuffled.
    ``labels`` marks the blood pool (1: heart chambers, aorta, pulmonary
    trunk) so tests can check where a method looked.
    """

    hu: np.ndarray
    labels: np.ndarray
    enhanced: bool
    blood_hu: float
    pixel_spacing_mm: float
    slice_spacing_mm: float
    datasets: list[Dataset] = field(default_factory=list)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


class _SliceCanvas:
    """An axial HU image and its blood label, painted shape by shape (later shapes cover earlier ones)."""

    def __init__(self, size: int) -> None:
        self.hu = np.full((size, size), AIR_HU, np.float32)
        self.blood = np.zeros((size, size), np.uint8)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, value: float, blood: bool = False) -> None:
        """Fill an ellipse; only its bounding box is computed, which keeps big series cheap."""
        size = self.hu.shape[0]
        r0, r1 = max(0, int(cy - ry) - 1), min(size, int(cy + ry) + 2)
        c0, c1 = max(0, int(cx - rx) - 1), min(size, int(cx + rx) + 2)
        if r0 >= r1 or c0 >= c1:
            return
        inside = _ellipse(np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :], cy, cx, ry, rx)
        self.hu[r0:r1, c0:c1][inside] = value
        self.blood[r0:r1, c0:c1][inside] = int(blood)


def _chest_ct_slice(
    t: float, size: int, geometry: dict[str, float], blood_hu: float, wall_hu: float
) -> tuple[np.ndarray, np.ndarray]:
    """One axial slice at relative height ``t`` (0 = apex, 1 = diaphragm).

    Returns the noiseless HU image and the blood-pool label image.
    """
    n = float(size)
    cy, cx, s = geometry["cy"], geometry["cx"], geometry["scale"]
    canvas = _SliceCanvas(size)
    paint = canvas.ellipse

    # Table under the patient, separated by an air gap.
    table_top = int(round(cy + 0.335 * n * s))
    canvas.hu[table_top : table_top + max(1, int(0.02 * n)), max(0, int(cx - 0.38 * n)) : int(cx + 0.38 * n)] = TABLE_HU

    # Body: subcutaneous fat around muscle.
    body_rx, body_ry = 0.42 * n * s * geometry["body_w"], 0.30 * n * s
    paint(cy, cx, body_ry, body_rx, FAT_HU)
    paint(cy, cx, body_ry - 0.03 * n * s, body_rx - 0.03 * n * s, MUSCLE_HU)
    # Mediastinal fat between the lungs.
    paint(cy - 0.02 * n * s, cx, 0.20 * n * s, 0.085 * n * s, FAT_HU + 10)
    # Lungs: largest in the middle of the thorax.
    lung = 0.55 + 0.45 * np.sin(np.pi * (0.1 + 0.8 * t))
    for side in (-1.0, 1.0):
        paint(cy - 0.01 * n * s, cx + side * 0.20 * n * s, 0.21 * n * s * lung, 0.125 * n * s * lung, LUNG_HU)
    # Ribs: small dense dots just inside the fat layer.
    for angle in np.linspace(0.35, 2 * np.pi - 0.35, 9):
        ry_, rx_ = body_ry - 0.045 * n * s, body_rx - 0.045 * n * s
        paint(cy + ry_ * np.sin(angle), cx + rx_ * np.cos(angle), 0.012 * n, 0.018 * n, CORTICAL_BONE_HU)

    # Spine: vertebral body (dense cortex around a cancellous core), posterior elements, canal.
    vy, vr = cy + 0.19 * n * s, 0.058 * n * s
    cortex = max(1.0, 0.012 * n)
    paint(vy, cx, vr, vr, CORTICAL_BONE_HU)
    paint(vy, cx, vr - cortex, vr - cortex, CANCELLOUS_BONE_HU)
    paint(vy + vr + 0.025 * n * s, cx, 0.02 * n * s, 0.045 * n * s, CORTICAL_BONE_HU)
    paint(vy + vr + 0.005 * n * s, cx, 0.012 * n * s, 0.012 * n * s, 20.0)
    # Sternum in the upper and middle thorax.
    if t < 0.75:
        paint(cy - 0.245 * n * s, cx, 0.013 * n * s, 0.035 * n * s, CORTICAL_BONE_HU - 300)

    # Descending aorta, left of and in front of the spine, at every level.
    paint(cy + 0.10 * n * s, cx + 0.075 * n * s, 0.034 * n * s, 0.034 * n * s, blood_hu, blood=True)
    # Oesophagus (never enhanced) between aorta and spine.
    paint(cy + 0.095 * n * s, cx - 0.01 * n * s, 0.014 * n * s, 0.016 * n * s, MUSCLE_HU - 5)
    if 0.12 <= t <= 0.5:  # ascending aorta
        paint(cy - 0.09 * n * s, cx - 0.035 * n * s, 0.042 * n * s, 0.042 * n * s, blood_hu, blood=True)
    if 0.3 <= t <= 0.45:  # pulmonary trunk
        paint(cy - 0.08 * n * s, cx + 0.05 * n * s, 0.035 * n * s, 0.035 * n * s, blood_hu * 0.95, blood=True)
    if 0.45 <= t <= 0.95:  # heart: myocardial wall around the chambers
        h = 0.7 + 0.3 * np.sin(np.pi * (t - 0.45) / 0.5)
        hy, hx = cy - 0.045 * n * s, cx + 0.05 * n * s
        hry, hrx = 0.10 * n * s * h, 0.125 * n * s * h
        paint(hy, hx, hry, hrx, wall_hu)
        paint(hy, hx, hry - 0.018 * n * s, hrx - 0.018 * n * s, blood_hu, blood=True)
    return canvas.hu, canvas.blood


def chest_ct_phantom(
    rng: np.random.Generator,
    *,
    enhanced: bool,
    size: int = 128,
    n_slices: int = 32,
    noise_sd: float = 20.0,
    blood_hu: float | None = None,
    contrast_agent: str | None = None,
    shuffle: bool = True,
    feet_first: bool = False,
    signed_storage: bool | None = None,
) -> ChestCTPhantom:
    """Draw a chest CT series with or without contrast.

    ``blood_hu`` defaults to 30-50 HU without contrast (unenhanced blood) and
    250-350 HU with it (arterial to portal-venous phase).  The body position
    and proportions are randomised; ``contrast_agent`` goes into
    ContrastBolusAgent (absent when None).  ``signed_storage`` picks int16
    stored values with intercept 0 instead of uint16 with intercept -1024
    (random when None) so that both rescale paths are exercised.
    """
    if blood_hu is None:
        blood_hu = float(rng.uniform(250, 350) if enhanced else rng.uniform(30, 50))
    wall_hu = 110.0 if enhanced else MUSCLE_HU + 5
    geometry = {
        "cy": size * (0.5 + rng.uniform(-0.04, 0.04)),
        "cx": size * (0.5 + rng.uniform(-0.04, 0.04)),
        "scale": float(rng.uniform(0.88, 1.05)),
        "body_w": float(rng.uniform(0.95, 1.05)),
    }
    pixel_spacing = float(rng.uniform(320, 400) / size)
    slice_spacing = float(rng.choice([1.25, 2.5, 5.0]))
    hu = np.empty((n_slices, size, size), np.float32)
    labels = np.empty((n_slices, size, size), np.uint8)
    for k in range(n_slices):
        t = k / max(n_slices - 1, 1)
        clean, blood = _chest_ct_slice(t, size, geometry, blood_hu, wall_hu)
        # A little blur stands in for the scanner's point spread (partial volume at edges).
        hu[k] = ndimage.gaussian_filter(clean, 0.6) + rng.normal(0.0, noise_sd, clean.shape)
        labels[k] = blood
    datasets = ct_series_datasets(
        hu,
        pixel_spacing_mm=pixel_spacing,
        slice_spacing_mm=slice_spacing,
        contrast_agent=contrast_agent,
        feet_first=feet_first,
        signed_storage=bool(rng.integers(2)) if signed_storage is None else signed_storage,
    )
    if shuffle:
        datasets = [datasets[i] for i in rng.permutation(len(datasets))]
    return ChestCTPhantom(hu, labels, enhanced, blood_hu, pixel_spacing, slice_spacing, datasets)


def ct_series_datasets(
    hu: np.ndarray,
    *,
    pixel_spacing_mm: float = 0.7,
    slice_spacing_mm: float = 2.5,
    contrast_agent: str | None = None,
    feet_first: bool = False,
    signed_storage: bool = False,
) -> list[Dataset]:
    """Wrap a (slices, rows, cols) HU volume as CT Image datasets, one per slice.

    Slice k lies at z = k * spacing (or -k * spacing when ``feet_first``, so
    that the position order and the array order disagree as they do in some
    real series).  Values are rounded to integers and clipped to the range of
    the stored type.
    """
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(hu.shape[0]):
        ds = _base_dataset(CT_IMAGE_STORAGE, "CT", study_uid, series_uid)
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "FFS" if feet_first else "HFS"
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined = "CHEST"
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.PixelSpacing = [round(pixel_spacing_mm, 4), round(pixel_spacing_mm, 4)]
        ds.SliceThickness = slice_spacing_mm
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z = (-k if feet_first else k) * slice_spacing_mm
        ds.ImagePositionPatient = [
            round(-pixel_spacing_mm * hu.shape[2] / 2, 4), round(-pixel_spacing_mm * hu.shape[1] / 2, 4), round(z, 4)
        ]
        ds.KVP = 120
        ds.BitsStored = 16 if signed_storage else 12
        ds.HighBit = ds.BitsStored - 1
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        if signed_storage:
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = 0
            stored = np.clip(np.rint(hu[k]), -32768, 32767).astype(np.int16)
        else:
            ds.PixelRepresentation = 0
            ds.RescaleIntercept = -1024
            stored = np.clip(np.rint(hu[k]) + 1024, 0, 4095).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        if contrast_agent is not None:
            ds.ContrastBolusAgent = contrast_agent
        out.append(ds)
    return out


# ------------------------------------------------------------------ radiographs


@dataclass
class RadiographPhantom:
    """A synthetic chest radiograph and its ground truth.

    ``background`` is the display image (0..1, bright = dense) before the
    marker was drawn and ``display`` the one after; ``marker_mask`` marks
    every pixel the marker touched (letter and frame, anti-aliased edges
    included) and ``marker_box`` bounds it in pixel-edge coordinates
    (x1, y1 exclusive).  ``stored`` is what went into PixelData.
    """

    dataset: Dataset
    stored: np.ndarray
    display: np.ndarray
    background: np.ndarray
    marker_letter: str | None
    marker_box: Box | None
    marker_mask: np.ndarray | None


def radiograph_background(rng: np.random.Generator, rows: int, cols: int, noise_sd: float = 0.015) -> np.ndarray:
    """A smooth chest-like display image in 0..1 (bright = dense): dark air outside
    the body, darker lungs, bright mediastinum and spine, faint ribs and clavicles."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    img: np.ndarray = np.full((rows, cols), rng.uniform(0.04, 0.12), np.float32)  # cv2 types what it returns as any MatLike
    cx = cols * (0.5 + rng.uniform(-0.05, 0.05))
    body_top = rows * rng.uniform(0.02, 0.12)
    half_width = cols * rng.uniform(0.36, 0.46)
    # The torso: a wide U shape open at the bottom, brighter towards the centre.
    body = (np.abs(xx - cx) <= half_width * np.clip((yy - body_top) / (0.25 * rows), 0.45, 1.0)) & (yy >= body_top)
    img[body] = 0.42 + 0.06 * (yy[body] / rows)
    lung_cy = rows * rng.uniform(0.42, 0.5)
    for side in (-1.0, 1.0):
        lung = _ellipse(yy, xx, lung_cy, cx + side * half_width * 0.45, rows * 0.27, half_width * 0.32)
        img[lung] = 0.24 + 0.05 * (yy[lung] / rows)
    # Ribs: seven faint bright arcs, 7 % of the height apart, crossing the lungs out to the lateral edges.
    below_first = yy - (lung_cy - rows * 0.24 + 0.5 * (xx - cx) ** 2 / cols)
    k = np.rint(below_first / (rows * 0.07))
    ribs = (k >= 0) & (k <= 6) & (np.abs(below_first - k * rows * 0.07) < rows * 0.008)
    img[ribs & (np.abs(xx - cx) > half_width * 0.12) & body] += 0.07
    img[(np.abs(xx - cx) < cols * 0.06) & (yy > body_top)] += 0.12  # spine and mediastinum
    img[(np.abs(yy - (body_top + rows * 0.1)) < rows * 0.012) & body] += 0.08  # clavicles
    img = cv2.GaussianBlur(img, (0, 0), max(rows, cols) * 0.004)
    img += rng.normal(0.0, noise_sd, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def render_marker(
    shape: tuple[int, int],
    letter: str,
    *,
    origin: tuple[int, int],
    font: int,
    scale: float,
    thickness: int,
    framed: bool,
    frame_pad: int = 4,
) -> np.ndarray:
    """Coverage (0..1, anti-aliased) of a letter drawn with cv2.putText, optionally in a box.

    ``origin`` is the text's bottom-left corner as cv2.putText takes it.
    """
    canvas = np.zeros(shape, np.uint8)
    cv2.putText(canvas, letter, origin, font, scale, 255, thickness, cv2.LINE_AA)
    if framed:
        ys, xs = np.nonzero(canvas)
        cv2.rectangle(
            canvas,
            (int(xs.min()) - frame_pad, int(ys.min()) - frame_pad),
            (int(xs.max()) + frame_pad, int(ys.max()) + frame_pad),
            255,
            max(1, thickness // 2),
            cv2.LINE_AA,
        )
    return canvas.astype(np.float32) / 255.0


def place_marker(
    rng: np.random.Generator,
    shape: tuple[int, int],
    letter: str,
    *,
    font: int | None = None,
    height_fraction: float | None = None,
    framed: bool | None = None,
    border_fraction: float = 0.2,
) -> np.ndarray:
    """Draw ``letter`` at a random spot near a random image edge and return its coverage.

    The letter's height is ``height_fraction`` of the shorter image side
    (2.5-7 % when None, the range of real lead markers on a 35-43 cm
    detector); its centre falls within ``border_fraction`` of an edge.
    """
    rows, cols = shape
    font = int(rng.choice(HERSHEY_FONTS)) | (cv2.FONT_ITALIC if rng.random() < 0.25 else 0) if font is None else font
    height = max(10.0, (rng.uniform(0.025, 0.07) if height_fraction is None else height_fraction) * min(shape))
    (_, h_unit), _ = cv2.getTextSize(letter, font, 1.0, 1)
    scale = height / max(h_unit, 1)
    thickness = int(rng.integers(1, max(2, int(height / 7)) + 1))
    framed = bool(rng.random() < 0.35) if framed is None else framed
    (w, h), _ = cv2.getTextSize(letter, font, scale, thickness)
    pad = 2 * thickness + int(0.2 * h) + 4
    # Pick a band along one edge, then a spot in it that keeps the whole marker inside.
    edge = rng.integers(4)
    band_r = int(border_fraction * rows)
    band_c = int(border_fraction * cols)
    if edge == 0:  # top
        cy, cx = rng.uniform(pad + h / 2, band_r), rng.uniform(pad + w / 2, cols - pad - w / 2)
    elif edge == 1:  # bottom
        cy, cx = rng.uniform(rows - band_r, rows - pad - h / 2), rng.uniform(pad + w / 2, cols - pad - w / 2)
    elif edge == 2:  # left
        cy, cx = rng.uniform(pad + h / 2, rows - pad - h / 2), rng.uniform(pad + w / 2, band_c)
    else:  # right
        cy, cx = rng.uniform(pad + h / 2, rows - pad - h / 2), rng.uniform(cols - band_c, cols - pad - w / 2)
    origin = (int(cx - w / 2), int(cy + h / 2))
    return render_marker(shape, letter, origin=origin, font=font, scale=scale, thickness=thickness, framed=framed,
                         frame_pad=max(3, int(0.25 * h)))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def radiograph_dataset(
    display: np.ndarray, *, bits: int = 12, photometric: str = "MONOCHROME2", modality: str = "DX"
) -> tuple[Dataset, np.ndarray]:
    """Store a 0..1 display image (bright = dense) as a CR/DX dataset.

    MONOCHROME1 stores the inverse (dense = low value), as such detectors do.
    Returns the dataset and the stored array.
    """
    max_value = (1 << bits) - 1
    values = np.rint(np.clip(display, 0.0, 1.0) * max_value).astype(np.uint16)
    if photometric == "MONOCHROME1":
        values = (max_value - values).astype(np.uint16)
    sop_class = DX_IMAGE_STORAGE_PRESENTATION if modality == "DX" else CR_IMAGE_STORAGE
    ds = _base_dataset(sop_class, modality, generate_uid(), generate_uid())
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(display.shape[0]), int(display.shape[1])
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.35, 0.35]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.35, 0.35]
        ds.DetectorType = "DIRECT"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = []
        ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Chest")]
        ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
        # A window over the whole stored range: "for presentation" images must carry a VOI.
        ds.WindowCenter = (max_value + 1) / 2
        ds.WindowWidth = max_value + 1
        ds.PixelIntensityRelationship = "LOG"
        # +1: lower stored values mean less X-ray intensity, i.e. denser (MONOCHROME1 stores dense as low).
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
    ds.PixelData = values.tobytes()
    return ds, values


def chest_radiograph(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (512, 512),
    letter: str | None = "L",
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    font: int | None = None,
    height_fraction: float | None = None,
    framed: bool | None = None,
    noise_sd: float = 0.015,
) -> RadiographPhantom:
    """A chest radiograph with one burned-in ``letter`` near an edge (none when None).

    The marker is drawn at 85-100 % of full brightness, like a lead marker
    or an annotation burned in at the detector's maximum.
    """
    background = radiograph_background(rng, *shape, noise_sd=noise_sd)
    if letter is None:
        ds, stored = radiograph_dataset(background, bits=bits, photometric=photometric, modality=modality)
        return RadiographPhantom(ds, stored, background, background, None, None, None)
    coverage = place_marker(rng, shape, letter, font=font, height_fraction=height_fraction, framed=framed)
    brightness = rng.uniform(0.85, 1.0)
    display = background * (1.0 - coverage) + brightness * coverage
    ds, stored = radiograph_dataset(display, bits=bits, photometric=photometric, modality=modality)
    mask = coverage > 0
    ys, xs = np.nonzero(mask)
    box = Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1),
              "left" if letter == "L" else "right", 1.0, ds.SOPInstanceUID)
    return RadiographPhantom(ds, stored, display, background, letter, box, mask)
