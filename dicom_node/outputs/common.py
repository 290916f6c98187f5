"""What every object the node writes has in common: UIDs, identity, codes, source lookup.

All new UIDs come from :func:`new_uid` under the node's configured root, so a
site can tell the node's objects apart from the modality's and a PACS never
sees a UID the node does not own.  The equipment attributes name the node
(``Manufacturer`` = "dicom-node", ``SoftwareVersions`` = the package version)
and the model (``ManufacturerModelName``), because the node, not the scanner,
produced the object.
"""
from __future__ import annotations

import hashlib
import math
import re
import secrets
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ai_models.results import Box, Detection
from dicom_node import PRODUCT_NAME, __version__

UUID_ROOT = "2.25"
MAX_UID_LENGTH = 64
MIN_UNIQUE_DIGITS = 20  # about 66 bits of randomness left after the root
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UUID_NAMESPACE = uuid.UUID("8f0f5d8e-6f4a-4e53-9c7e-0d1c7a2b9e31")  # fixed: stable UIDs must not change between releases

MANUFACTURER = PRODUCT_NAME
SOFTWARE_VERSION = __version__

# Local coding scheme for the few concepts no standard code covers (DICOM
# reserves designators starting with "99" for private schemes).
LOCAL_SCHEME = "99DCMNODE"
LOCAL_SCHEME_NAME = "dicom-node local codes"
HEADER_AGREEMENT = Code("HDRAGREE", LOCAL_SCHEME, "Header agreement")
HEADER_VALUE = Code("HDRVALUE", LOCAL_SCHEME, "Header value")
OTHER_VIEW = Code("OTHERVIEW", LOCAL_SCHEME, "Other view")

UNIT_ONE = codes.UCUM.NoUnits  # ("1", UCUM, "no units"): probabilities in [0, 1]
UNIT_ML = Code("ml", "UCUM", "milliliter")  # UCUM is a grammar; "ml" is its millilitre
UNIT_MM2 = codes.UCUM.SquareMillimeter
UNIT_PIXELS = Code("{pixels}", "UCUM", "pixels")  # an area counted in pixels (as highdicom writes Rows/Columns)


def validate_uid_root(root: str) -> str:
    """Return ``root`` without a trailing dot, or raise ValueError if it cannot prefix a UID."""
    root = root.rstrip(".")
    if not _UID_ROOT_RE.match(root):
        raise ValueError(f"UID root {root!r} must be digits separated by dots, without leading zeros")
    if len(root) + 1 + MIN_UNIQUE_DIGITS > MAX_UID_LENGTH:
        longest = MAX_UID_LENGTH - 1 - MIN_UNIQUE_DIGITS
        raise ValueError(f"UID root {root!r} is too long: at most {longest} characters leave room for a unique suffix")
    return root


def _suffix_digits(root: str) -> int:
    return min(MAX_UID_LENGTH - len(root) - 1, 38)


def new_uid(root: str) -> str:
    """A fresh UID under ``root``.

    The root "2.25" means UUID-derived UIDs (2.25.<decimal of a random UUID>,
    ISO/IEC 9834-8); any other root gets a random decimal suffix filling the
    64 characters a UID may have (at most 38 digits).
    """
    root = validate_uid_root(root)
    if root == UUID_ROOT:
        return f"{root}.{uuid.uuid4().int}"
    digits = _suffix_digits(root)
    return f"{root}.{secrets.randbelow(9 * 10 ** (digits - 1)) + 10 ** (digits - 1)}"


def stable_uid(root: str, *parts: str) -> str:
    """The same UID for the same ``parts`` under ``root`` (e.g. a model's device observer UID)."""
    root = validate_uid_root(root)
    key = "\x1f".join(parts)
    if root == UUID_ROOT:
        return f"{root}.{uuid.uuid5(_UUID_NAMESPACE, key).int}"
    value = int.from_bytes(hashlib.sha256(key.encode()).digest(), "big") % 10 ** _suffix_digits(root)
    return f"{root}.{value}"


SpacingBasis = Literal["PixelSpacing", "ImagerPixelSpacing", "pixels"]
# What an area measured on each basis means, as the SR and the docs say it.
SPACING_BASIS_TEXT: dict[str, str] = {
    "PixelSpacing": "Pixel Spacing (0028,0030): spacing in the patient",
    "ImagerPixelSpacing": ("Imager Pixel Spacing (0018,1164): spacing at the detector plane, not corrected for "
                           "geometric magnification, so sizes in the patient are smaller"),
    "pixels": "no usable pixel spacing (absent or zero): measured in pixels",
}


@dataclass(frozen=True)
class PlanarSpacing:
    """The spacing (row, column) in mm a projection image is measured with, and which attribute it came from."""

    basis: SpacingBasis
    row_mm: float | None = None
    column_mm: float | None = None

    @property
    def known(self) -> bool:
        return self.row_mm is not None and self.column_mm is not None

    def describe(self) -> str:
        return SPACING_BASIS_TEXT[self.basis]


def usable_spacing(value: Any) -> tuple[float, float] | None:
    """Two finite, positive numbers, or None: a zero spacing (``0\\0``, as some CR writers send) means unknown."""
    try:
        row, column = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and v > 0 for v in (row, column)):
        return None
    return row, column


def projection_spacing(source: Dataset) -> PlanarSpacing:
    """Pixel Spacing when usable, else Imager Pixel Spacing (at the detector plane, see the CR/DX IODs), else pixels."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = usable_spacing(source.get(keyword))
        if spacing is not None:
            return PlanarSpacing(keyword, *spacing)  # type: ignore[arg-type]
    return PlanarSpacing("pixels")


def device_serial_number() -> str:
    """The host name: tells which node of a deployment wrote an object (no patient data)."""
    return (socket.gethostname() or "unknown")[:64]


def set_node_equipment(ds: Dataset, model_name: str) -> None:
    """Name the node as the equipment that produced ``ds`` (General Equipment module)."""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = model_name[:64]
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.DeviceSerialNumber = device_serial_number()


def acquisition_equipment(source: Dataset) -> hd.ContributingEquipment | None:
    """The source's own equipment, kept as Contributing Equipment once the node becomes the Manufacturer."""
    manufacturer = str(source.get("Manufacturer", "") or "")
    if not manufacturer:
        return None

    def optional(keyword: str) -> str | None:
        value = source.get(keyword)
        return str(value) if value else None

    versions = source.get("SoftwareVersions")
    software_versions = ([str(v) for v in versions] if not isinstance(versions, str) else versions) if versions else None
    return hd.ContributingEquipment(
        manufacturer, codes.DCM.AcquisitionEquipment,
        manufacturer_model_name=optional("ManufacturerModelName"),
        device_serial_number=optional("DeviceSerialNumber"),
        institution_name=optional("InstitutionName"),
        station_name=optional("StationName"),
        software_versions=software_versions,
    )


def seg_algorithm(name: str, version: str, family: Code | hd.sr.CodedConcept) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification for SEG segments (family: CID 7162, e.g. DCM 123110 'Artificial Intelligence')."""
    return hd.AlgorithmIdentificationSequence(name=name, family=family, version=version, source=MANUFACTURER)


def sr_algorithm(name: str, version: str) -> hd.sr.AlgorithmIdentification:
    """Algorithm Identification (TID 4019) for SR measurement groups."""
    return hd.sr.AlgorithmIdentification(name=name, version=version, manufacturer=MANUFACTURER)


def device_observer(uid_root: str, model_name: str, model_version: str) -> hd.sr.ObserverContext:
    """The model as a device observer; its UID is stable per model and version so reports can be grouped."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=stable_uid(uid_root, "device-observer", model_name, model_version),
            name=f"{model_name} {model_version}"[:64],
            manufacturer_name=MANUFACTURER,
            model_name=model_name[:64],
            serial_number=device_serial_number(),
        ),
    )


def sources_in_order(sources: Iterable[Dataset], uids: Sequence[str], what: str) -> list[Dataset]:
    """The source datasets in the order of ``uids``; a UID with no dataset is a clear error."""
    by_uid: dict[str, Dataset] = {}
    for ds in sources:
        by_uid.setdefault(str(ds.SOPInstanceUID), ds)
    missing = [uid for uid in uids if uid not in by_uid]
    if missing:
        raise ValueError(f"{what} refers to {len(missing)} SOP instance(s) not among the sources, e.g. {missing[0]}")
    return [by_uid[uid] for uid in uids]


def text(value: str, limit: int) -> str:
    """Cut a free-text value to its VR's length limit (LO 64, ST 1024, ...)."""
    return value if len(value) <= limit else value[: limit - 3] + "..."


def box_source_uid(box: Box, detection: Detection) -> str:
    """The instance a box lies on; a box without one is only unambiguous on a single-image detection."""
    if box.sop_instance_uid:
        return box.sop_instance_uid
    if len(detection.source_sop_instance_uids) == 1:
        return detection.source_sop_instance_uids[0]
    raise ValueError(f"box {box} names no SOP instance and the detection has {len(detection.source_sop_instance_uids)} sources")
