"""Database: the node's single source of truth and its queue."""
from dicom_node.db.models import (
    Association, Base, Delivery, DeliveryItem, Dispatch, Instance, Job, Series, Study,
)
from dicom_node.db.engine import Database
from dicom_node.db import admin_models  # noqa: F401,E402 - web admin hook: its tables join Base.metadata

__all__ = ["Association", "Base", "Database", "Delivery", "DeliveryItem", "Dispatch", "Instance", "Job", "Series", "Study"]
