"""The state machines of the node's rows, as ``StrEnum``s.

The values are what the ``state`` columns store (plain strings, so that an
operator can read them in SQL and no migration was needed); a member
compares equal to its string, so ``Job.state == JobState.DONE`` and
``row.state == "done"`` agree.  Code names the members, never the strings.
"""
from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    """A series (and a study): arriving, quiet period over, rules applied."""

    RECEIVING = "receiving"  # instances arriving, or the quiet period runs
    COMPLETE = "complete"  # quiet period over, rules not yet applied
    DISPATCHED = "dispatched"  # rules applied, actions queued


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
    """One object of a delivery: not yet accepted by the destination, or accepted."""

    PENDING = "pending"
    SENT = "sent"


class SelfTestState(StrEnum):
    """A self-test run: its rules are in force while waiting or running."""

    WAITING = "waiting"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
