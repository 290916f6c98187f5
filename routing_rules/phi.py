"""Attributes whose values identify a patient: never written into a reason.

A fired rule's reasons are stored with the dispatch, shown on the web study
page and printed by ``rules test``; a rule that tests ``PatientName`` would
otherwise copy the patient's name (and the name written in the rule) into all
three.  For the attributes listed here an explanation says only which field
matched or did not ("PatientName matched", "PatientName did not match"),
never the header value nor the rule's operand.

The list follows the direct identifiers of DICOM PS3.15 Annex E (Basic
Application Level Confidentiality Profile) that routing rules can plausibly
name: the patient's names, identifiers, birth data, addresses and telephone
numbers, the people named in the study, and the AccessionNumber (an
identifier of the order, which can be looked up to the patient).  Dates and
times of the study, PatientAge, PatientSex and the modality's descriptions
are not on it: rules route by them all the time and an explanation without
them would not explain anything.  Attributes are matched by tag, so a rule
that names ``(0010,0010)`` is treated like one that names ``PatientName``.
"""

from __future__ import annotations

from pydicom.datadict import keyword_dict

from routing_rules.fields import Field

__all__ = ["PHI_KEYWORDS", "is_phi"]

PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "MedicalRecordLocator",
    "PatientInsurancePlanCodeSequence",
    "MilitaryRank",
    "BranchOfService",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "OperatorsName",
    "PersonName",
    "AccessionNumber",
    "InstitutionAddress",
)
"""Keywords of the attributes whose values reasons never show."""

_PHI_TAGS = frozenset(keyword_dict[k] for k in PHI_KEYWORDS)


def is_phi(field: Field) -> bool:
    """Whether explanations must not show this field's values (nor the rule's operands for it)."""
    return field.finding is None and field.tag in _PHI_TAGS
