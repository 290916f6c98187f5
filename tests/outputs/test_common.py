"""UIDs under the node's root and the node's identity."""
from __future__ import annotations

import re

import pytest
from pydicom.dataset import Dataset

from dicom_node import __version__
from dicom_node.outputs.common import device_observer, new_uid, set_node_equipment, stable_uid, validate_uid_root

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def test_uuid_root_gives_uuid_derived_uids() -> None:
    uids = {new_uid("2.25") for _ in range(500)}
    assert len(uids) == 500
    for uid in uids:
        assert UID_RE.match(uid) and len(uid) <= 64
        prefix, value = uid[:5], int(uid[5:])
        assert prefix == "2.25." and 0 < value < 2**128


@pytest.mark.parametrize("root", ["1.2.826.0.1.3680043.10.1411", "1.2.826.0.1.3680043.10.1411.", "1.3.6.1.4.1.99999.42.7"])
def test_other_roots_get_a_unique_suffix_within_64_characters(root: str) -> None:
    uids = {new_uid(root) for _ in range(500)}
    assert len(uids) == 500
    base = root.rstrip(".") + "."
    for uid in uids:
        assert uid.startswith(base) and UID_RE.match(uid) and len(uid) <= 64
        assert len(uid) - len(base) >= 20  # enough randomness left for uniqueness


@pytest.mark.parametrize("root", ["1.02.3", "abc", "1..2", "", "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20"])
def test_bad_roots_are_refused(root: str) -> None:
    with pytest.raises(ValueError, match="UID root"):
        validate_uid_root(root)


def test_stable_uid_is_stable_per_parts_and_root() -> None:
    for root in ("2.25", "1.2.826.0.1.3680043.10.1411"):
        a = stable_uid(root, "device-observer", "lung", "1.0")
        assert a == stable_uid(root, "device-observer", "lung", "1.0")
        assert a != stable_uid(root, "device-observer", "lung", "1.1")
        assert a.startswith(root + ".") and UID_RE.match(a) and len(a) <= 64


def test_node_equipment_names_node_version_and_model() -> None:
    ds = Dataset()
    set_node_equipment(ds, "chest-view")
    assert (ds.Manufacturer, ds.SoftwareVersions, ds.ManufacturerModelName) == ("dicom-node", __version__, "chest-view")
    assert ds.DeviceSerialNumber


def test_device_observer_uid_is_under_root_and_same_for_same_model() -> None:
    root = "1.2.826.0.1.3680043.10.1411"
    first = device_observer(root, "lr-mark", "1.0.0")
    second = device_observer(root, "lr-mark", "1.0.0")
    uid_of = [item.UID for item in first if "UID" in item]
    assert uid_of == [item.UID for item in second if "UID" in item]
    assert uid_of and uid_of[0].startswith(root + ".")
