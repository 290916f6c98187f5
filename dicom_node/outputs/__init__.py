"""Builders that turn model results into DICOM objects: SEG, TID 1500 SR, derived images.

Each builder takes the source datasets (never modified) and one typed result
from :mod:`ai_models.results`, and returns objects under the node's UID root
ready to be written and sent.  See docs/outputs.md for what each contains.
"""
from dicom_node.outputs.common import new_uid, stable_uid, validate_uid_root
from dicom_node.outputs.derived import CONTRAST_BOLUS_MODULE, build_erased_images, build_header_fix_copy
from dicom_node.outputs.seg import SEGMENT_CODES, build_seg, segment_codes
from dicom_node.outputs.sr import build_classification_sr, build_detection_sr, build_segmentation_sr, build_sr

__all__ = [
    "CONTRAST_BOLUS_MODULE",
    "SEGMENT_CODES",
    "build_classification_sr",
    "build_detection_sr",
    "build_erased_images",
    "build_header_fix_copy",
    "build_seg",
    "build_segmentation_sr",
    "build_sr",
    "new_uid",
    "segment_codes",
    "stable_uid",
    "validate_uid_root",
]
