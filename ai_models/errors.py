"""Exceptions with messages an operator can act on."""


class ModelError(Exception):
    """Base class for everything ai_models raises on purpose."""


class WeightError(ModelError):
    """A weight file is missing, truncated, or does not fit the network.

    Raised instead of ever running a network with random weights: the message
    names the file, the layer, and the expected and found shapes.
    """


class InputError(ModelError):
    """The DICOM input cannot be turned into what the model needs."""
