"""The model zoo of the DICOM node, usable on its own.

Three steps, as MI2RLNet promised, for every model::

    from ai_models import load_model
    model = load_model("enhancement", weights="/path/enhance.h5")
    result = model.predict("/path/to/series/")

Inputs are pydicom datasets, file paths or folders; results are the typed
objects of :mod:`ai_models.results`.  This package knows nothing about
networking or the node's database.
"""
from ai_models.errors import InputError, ModelError, WeightError
from ai_models.info import ModelInfo, WeightSpec
from ai_models.registry import available_models, get_info, load_model, register
from ai_models.results import Box, Classification, Detection, Segmentation, SliceEvidence

__all__ = [
    "Box", "Classification", "Detection", "InputError", "ModelError", "ModelInfo", "Segmentation",
    "SliceEvidence", "WeightError", "WeightSpec", "available_models", "get_info", "load_model", "register",
]
