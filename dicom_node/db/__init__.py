"""Database: the node's single source of truth and its queue."""
from dicom_node.db.models import (
    Association, Base, Delivery, DeliveryItem, Dispatch, Instance, Job, Series, Study,
)
from dicom_node.db.engine import Database

__all__ = ["Association", "Base", "Database", "Delivery", "DeliveryItem", "Dispatch", "Instance", "Job", "Series", "Study"]
