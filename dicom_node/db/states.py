"""The state machines of the node's rows, as ``StrEnum``s.

The values are what the ``state`` columns store (plain strings, so that an
operator can read them in SQL and no migration was needed); a member
compares equal to its string, so ``Job.state == JobState.DONE`` and
``row.state == "done"`` agree.  Code names the members, never the strings.
"""
from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    """A series (and a study): arriving, quiet period over, rules applied, or rules could not be applied.

    ``failed`` holds one series or study whose dispatch raised (its reason
    is in ``failure_reason``) so that it does not stop the sweep for the
    others; it waits for an operator to retry (back to ``complete``, or
    ``receiving`` for a study) or dismiss it (to ``dispatched``, nothing
    queued).  See :mod:`dicom_node.routing.failures`.
    """

    RECEIVING = "receiving"  # instances arriving, or the quiet period runs
    COMPLETE = "complete"  # quiet period over, rules not yet applied
    DISPATCHED = "dispatched"  # rules applied, actions queued (or dismissed by an operator)
    FAILED = "failed"  # dispatch raised: waits for an operator (retry or dismiss)


StudyState = SeriesState


class JobState(StrEnum):
    """A model job: queued, claimed by a worker, finished either way."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """A delivery (one destination, a batch of objects)."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class DeliveryItemState(StrEnum):
    """One object of a delivery: not yet accepted by the destination, accepted, or not to be sent."""

    PENDING = "pending"
    SENT = "sent"
    SUPERSEDED = "superseded"  # a newer copy of the instance goes to the destination in its own item


class SelfTestState(StrEnum):
    """A self-test run: its rules are in force while waiting or running."""

    WAITING = "waiting"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"


class AssociationEnd(StrEnum):
    """How an association ended (``associations.end_reason``)."""

    RELEASED = "released"
    PEER_ABORT = "peer-abort"  # an A-ABORT from the peer
    CONNECTION_LOST = "connection-lost"  # TCP closed or reset, or a read timed out in the middle of a PDU
    PROTOCOL_ERROR = "protocol-error"  # we aborted a PDU over our limits (set by receive.pynetdicom_patches)
    IDLE_TIMEOUT = "idle-timeout"  # silent for network_timeout_seconds
    ABORTED = "aborted"  # we aborted for another reason
    NODE_RESTART = "node-restart"  # left open by a receiver that no longer runs (start-up recovery)
