"""Database: the node's single source of truth and its queue (models, engine, Alembic migrations).

A foundation package: it imports nothing else from the node but :mod:`dicom_node.clock`.
"""
from dicom_node.db import admin_models  # noqa: F401,E402 - web admin hook: its tables join Base.metadata
from dicom_node.db.engine import Database
from dicom_node.db.models import (
    Association,
    Base,
    Delivery,
    DeliveryItem,
    Dispatch,
    Instance,
    Job,
    Series,
    Study,
)

__all__ = ["Association", "Base", "Database", "Delivery", "DeliveryItem", "Dispatch", "Instance", "Job", "Series", "Study"]
