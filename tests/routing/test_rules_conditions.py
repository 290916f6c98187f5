"""Every condition operator, positive and negative, on synthetic headers."""

from __future__ import annotations

import pytest
from rules_helpers import dataset, errors, fires

from routing_rules import SeriesHeaders
from routing_rules.fields import resolve_field

CASES = [
    # (match line, header, expected)
    ('Modality = "CT"', {"Modality": "CT"}, True),
    ('Modality = "CT"', {"Modality": "MR"}, False),
    ('Modality = "CT"', {}, False),
    ('Modality = { eq = "CT" }', {"Modality": "CT "}, True),  # DICOM space padding is ignored
    ('Modality = { ne = "CT" }', {"Modality": "MR"}, True),
    ('Modality = { ne = "CT" }', {"Modality": "CT"}, False),
    ('Modality = { ne = "CT" }', {}, True),  # absent satisfies a negated test
    ('BodyPartExamined = ["CHEST", "THORAX"]', {"BodyPartExamined": "THORAX"}, True),
    ('BodyPartExamined = ["CHEST", "THORAX"]', {"BodyPartExamined": "ABDOMEN"}, False),
    ('BodyPartExamined = { in = ["CHEST"] }', {"BodyPartExamined": "CHEST"}, True),
    ('BodyPartExamined = { not_in = ["HEAD", "BRAIN"] }', {"BodyPartExamined": "CHEST"}, True),
    ('BodyPartExamined = { not_in = ["HEAD", "BRAIN"] }', {"BodyPartExamined": "BRAIN"}, False),
    ('SeriesDescription = { glob = "*LUNG*" }', {"SeriesDescription": "Thorax Lung 1.0 B70f"}, True),
    ('SeriesDescription = { glob = "*LUNG*" }', {"SeriesDescription": "Mediastinum"}, False),
    ('SeriesDescription = { glob = "LUNG" }', {"SeriesDescription": "Lung 1.0"}, False),  # glob matches the whole value
    ('SeriesDescription = { glob = ["*lung*", "*chest*"] }', {"SeriesDescription": "chest 5mm"}, True),
    ('SeriesDescription = { glob = "T?_*" }', {"SeriesDescription": "T1_MPRAGE"}, True),
    ('SeriesDescription = { not_glob = "*scout*" }', {"SeriesDescription": "Scout"}, False),
    ('SeriesDescription = { not_glob = "*scout*" }', {"SeriesDescription": "Axial"}, True),
    ('SeriesDescription = { regex = "t[12]" }', {"SeriesDescription": "sag T2 tse"}, True),  # search, not full match
    ('SeriesDescription = { regex = "^t[12]$" }', {"SeriesDescription": "sag T2 tse"}, False),
    ('SeriesDescription = { not_regex = "loc|scout" }', {"SeriesDescription": "3-plane LOC"}, False),
    ('SeriesDescription = { not_regex = "loc|scout" }', {"SeriesDescription": "ax flair"}, True),
    ("SliceThickness = { lt = 2.5 }", {"SliceThickness": "1.25"}, True),
    ("SliceThickness = { lt = 2.5 }", {"SliceThickness": "2.5"}, False),
    ("SliceThickness = { le = 2.5 }", {"SliceThickness": "2.5"}, True),
    ("SliceThickness = { le = 2.5 }", {"SliceThickness": "2.6"}, False),
    ("SliceThickness = { gt = 2.5 }", {"SliceThickness": 3.0}, True),
    ("SliceThickness = { gt = 2.5 }", {"SliceThickness": 2.5}, False),
    ("SliceThickness = { ge = 2.5 }", {"SliceThickness": 2.5}, True),
    ("SliceThickness = { ge = 2.5 }", {"SliceThickness": 2.4}, False),
    ("SliceThickness = { between = [1, 3] }", {"SliceThickness": "3.000"}, True),
    ("SliceThickness = { between = [1, 3] }", {"SliceThickness": "3.001"}, False),
    ("SliceThickness = { gt = 0.5, lt = 2.5 }", {"SliceThickness": "1"}, True),
    ("SliceThickness = { gt = 0.5, lt = 2.5 }", {"SliceThickness": "0.4"}, False),
    ("SliceThickness = { lt = 2.5 }", {"SliceThickness": "thin"}, False),  # not a number: no match, no crash
    ("SliceThickness = { lt = 2.5 }", {}, False),
    ("SliceThickness = 1", {"SliceThickness": "1.000000"}, True),  # numeric equality on DS
    ('SliceThickness = "1.0"', {"SliceThickness": "1"}, True),  # text operand on a numeric field is a number
    ("Rows = { ge = 512 }", {"Rows": 512}, True),
    ("Rows = { ge = 512 }", {"Rows": 256}, False),
    ('ContrastBolusAgent = { present = true }', {"ContrastBolusAgent": "Iomeprol"}, True),
    ('ContrastBolusAgent = { present = true }', {"ContrastBolusAgent": ""}, False),  # empty type 2 = absent
    ('ContrastBolusAgent = { present = true }', {}, False),
    ('ContrastBolusAgent = { present = false }', {"ContrastBolusAgent": "  "}, True),
    ('ContrastBolusAgent = { absent = true }', {}, True),
    ('ContrastBolusAgent = { absent = true }', {"ContrastBolusAgent": "Iomeprol"}, False),
    ('StudyDate = { ge = "20240101" }', {"StudyDate": "20240315"}, True),
    ('StudyDate = { ge = "20240101" }', {"StudyDate": "20231231"}, False),
    ('StudyDate = { between = ["20240101", "20241231"] }', {"StudyDate": "2024.06.01"}, True),  # old separators dropped
    ("StudyDate = 2024-03-15", {"StudyDate": "20240315"}, True),  # a TOML date literal
    ('StudyTime = { lt = "120000" }', {"StudyTime": "093015.123"}, True),
    ('PatientAge = { ge = 18 }', {"PatientAge": "045Y"}, True),
    ('PatientAge = { ge = 18 }', {"PatientAge": "006M"}, False),
    ('PatientAge = { lt = "002Y" }', {"PatientAge": "010W"}, True),
    ('PatientAge = "045Y"', {"PatientAge": "045y"}, True),
    ('"(0018,0015)" = "CHEST"', {"BodyPartExamined": "CHEST"}, True),
    ('"00180015" = "CHEST"', {"(0018,0015)": "CHEST"}, True),
    ('"(0029,1010)" = { glob = "*abc*" }', {"(0029,1010)": "xxABCxx"}, True),  # private tag: compared as given
    ('"(0029,1010)" = { gt = 3 }', {"(0029,1010)": "4.5"}, True),
]


@pytest.mark.parametrize(("match", "header", "expected"), CASES)
def test_operator(match: str, header: dict, expected: bool) -> None:
    assert fires(match, header) is expected


@pytest.mark.parametrize(
    ("match", "value", "expected"),
    [
        ('Modality = "ct"', "CT", True),
        ('SeriesDescription = { glob = "*lung*" }', "LUNG", True),
        ('SeriesDescription = { regex = "lung" }', "LUNG", True),
        ('BodyPartExamined = ["chest"]', "Chest", True),
        ('Modality = { eq = "ct", case_sensitive = true }', "CT", False),
        ('Modality = { eq = "CT", case_sensitive = true }', "CT", True),
        ('SeriesDescription = { glob = "*lung*", case_sensitive = true }', "LUNG", False),
        ('SeriesDescription = { regex = "lung", case_sensitive = true }', "LUNG", False),
        ('SeriesDescription = { not_in = ["lung"], case_sensitive = true }', "LUNG", True),
    ],
)
def test_case_sensitivity(match: str, value: str, expected: bool) -> None:
    field = match.split()[0]
    assert fires(match, {field: value}) is expected


IMAGE_TYPE = {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}


@pytest.mark.parametrize(
    ("match", "header", "expected"),
    [
        ('ImageType = "LOCALIZER"', IMAGE_TYPE, True),  # any value matches
        ('ImageType = "AXIAL"', IMAGE_TYPE, False),
        ('ImageType = { ne = "LOCALIZER" }', IMAGE_TYPE, False),  # negation: no value may match
        ('ImageType = { ne = "LOCALIZER" }', {"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, True),  # backslash form
        ('ImageType = { glob = "*ARY", values = "all" }', IMAGE_TYPE, False),
        ('ImageType = { in = ["ORIGINAL", "PRIMARY", "AXIAL"], values = "all" }', {"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, True),
        ('ImageType = { in = ["ORIGINAL", "PRIMARY"], values = "all" }', IMAGE_TYPE, False),
        ("PixelSpacing = { lt = 0.5 }", {"PixelSpacing": ["0.8", "0.4"]}, True),
        ("PixelSpacing = { lt = 0.5, values = \"all\" }", {"PixelSpacing": ["0.8", "0.4"]}, False),
        ('ImageComments = { glob = "*\\\\*" }', {"ImageComments": "a\\b"}, True),  # LT is never split
    ],
)
def test_multi_valued(match: str, header: dict, expected: bool) -> None:
    assert fires(match, header) is expected


def test_pydicom_datasets_multi_value_and_numbers() -> None:
    ds = dataset(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], SliceThickness="0.625", Rows=512)
    series = SeriesHeaders.from_datasets([ds])
    from rules_helpers import ruleset

    rs = ruleset('ImageType = "AXIAL"\nSliceThickness = { lt = 1 }\nRows = 512')
    assert rs.evaluate(series)
    assert not ruleset('ImageType = "LOCALIZER"').evaluate(series)


def test_dicom_json_headers() -> None:
    header = {
        "00080060": {"vr": "CS", "Value": ["MR"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "M"]},
        "00180010": {"vr": "LO"},  # present but empty -> absent
    }
    assert fires('Modality = "MR"\nImageType = "M"\nPatientName = { glob = "doe^*" }', header)
    assert fires("ContrastBolusAgent = { absent = true }", header)


def test_file_meta_fields_are_readable() -> None:
    ds = dataset(Modality="CT")
    ds.file_meta = dataset(SourceApplicationEntityTitle="CT_SCANNER_1")
    assert fires('SourceApplicationEntityTitle = "ct_scanner_1"', ds)  # type: ignore[arg-type]


def test_sequence_attribute_supports_presence_only() -> None:
    ds = dataset(Modality="CT")
    ds.ReferencedImageSequence = [dataset(ReferencedSOPInstanceUID="1.2.3")]
    assert fires("ReferencedImageSequence = { present = true }", ds)  # type: ignore[arg-type]
    assert not fires("ReferencedImageSequence = { present = true }", dataset(Modality="CT"))  # type: ignore[arg-type]
    assert "only present/absent" in errors('ReferencedImageSequence = "x"')[0]


@pytest.mark.parametrize(
    ("match", "fragment"),
    [
        ('BodyPart = "CHEST"', "unknown field 'BodyPart'"),
        ('modality = "CT"', "did you mean 'Modality'"),
        ('"(zz18,0015)" = "CHEST"', "unknown field"),
        ('SeriesDescription = { contains = "x" }', "unknown operator 'contains'"),
        ('SeriesDescription = { regex = "(unclosed" }', "bad regular expression"),
        ('SeriesDescription = { lt = 3 }', "needs a numeric, date, time or age field"),
        ("SliceThickness = { lt = \"thin\" }", "not a number"),
        ("SliceThickness = { between = [3, 1] }", "is above high value"),
        ("SliceThickness = { between = [1] }", "needs two values"),
        ('StudyDate = { ge = "2024-1-1" }', "not of the form YYYYMMDD"),
        ("Modality = true", "present = true"),
        ("Modality = []", "non-empty list"),
        ('Modality = { scope = "all" }', "no operator given"),
        ('Modality = { eq = "CT", scope = "every" }', "option 'scope'"),
        ('Modality = { eq = "CT", case_sensitive = "yes" }', "option 'case_sensitive'"),
        ('Modality = { present = "yes" }', "takes true or false"),
        ("PixelData = { eq = 1 }", "only present/absent"),
        ("SliceThickness = nan", "finite"),
        ("ContrastBolusAgent = { present = true, absent = true }", "either 'present' or 'absent'"),
    ],
)
def test_invalid_conditions(match: str, fragment: str) -> None:
    messages = errors(match)
    assert any(fragment in m for m in messages), messages


def test_field_resolution() -> None:
    by_keyword = resolve_field("BodyPartExamined")
    by_tag = resolve_field("(0018,0015)")
    assert by_keyword.tag == by_tag.tag == 0x00180015
    assert by_tag.keyword == "BodyPartExamined" and by_tag.vr == "CS"
    private = resolve_field("00291010")
    assert private.keyword == "" and private.kind.value == "unknown"


def test_raw_and_malformed_dataset_elements() -> None:
    """Values as read from files (raw bytes, invalid DS, private UN) never break evaluation."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag
    from rules_helpers import ruleset

    ds = dataset(Modality="CT")
    ds[0x00180050] = RawDataElement(Tag(0x00180050), "DS", 4, b"abc ", 0, False, True)
    ds[0x00291010] = RawDataElement(Tag(0x00291010), None, 4, b"12.5", 0, True, True)
    ds[0x00280030] = RawDataElement(Tag(0x00280030), "DS", 8, b"0.5\\0.7 ", 0, False, True)
    series = SeriesHeaders([ds])
    [thickness] = ruleset("SliceThickness = { lt = 2 }").explain(series)
    assert thickness.failure == "SliceThickness is 'abc', wanted < 2"
    assert ruleset('"(0029,1010)" = { gt = 3 }\nPixelSpacing = { lt = 0.6 }').evaluate(series)
