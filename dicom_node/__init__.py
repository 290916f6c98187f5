"""The DICOM node service: receive, store durably, detect completion, route, run models, deliver."""

__version__ = "0.1.0"
PRODUCT_NAME = "dicom-node"
