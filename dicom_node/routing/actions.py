"""The node's rule actions, each validated (at rule load) and executed (at dispatch) here.

``forward``: the rule library validates it (its one built-in type); its
execution queues one delivery per destination (:func:`forward_action`).

``model``: validated against the model catalog (:func:`check_model_action`),
executed by queuing one job (:func:`queue_model_job`).  In a rule::

    [[rule.actions]]
    type = "model"
    model = "enhancement-hu"           # a name from `dicom-node models list`
    options = { }                      # model options, checked against the model's own
    outputs = ["sr"]                   # classification: sr, corrected-copy; detection: sr, erased; segmentation: seg, sr
    destinations = ["pacs"]            # where the outputs go
    header_fix_threshold = 0.8         # header-fix models: act only at or above this confidence

Rules that name a model whose weights are missing still load (weights are
configuration): the job fails at once with a reason naming the weight file,
and ``rules check`` / ``models list`` show the model as unavailable.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.db import Delivery, DeliveryItem, Instance, Job
from dicom_node.db.states import JobState
from dicom_node.delivery.queue import enqueue
from routing_rules.actions import ActionContext, ActionRegistry, builtin_registry
from routing_rules.errors import ActionError


@dataclass(frozen=True)
class Target:
    """What an action applies to: a series or a whole study in one run, or objects of a series just stored.

    At instance level ``uid`` names the batch (the first object's row id and
    version), which keeps its dispatch key unique: each copy is routed once.
    """

    level: str
    uid: str
    run: int
    series_id: int | None
    study_id: int
    instances: list[Instance]


class ActionHandler(Protocol):
    def __call__(self, session: Session, target: Target, rule_name: str, action: dict[str, Any], now: datetime) -> str: ...


def forward_action(session: Session, target: Target, rule_name: str, action: dict[str, Any], now: datetime) -> str:
    """Queue one delivery per destination with the target's instances.

    On a rerun (late instances), only copies the destination has not been
    given yet are queued: a new instance, or a newer version of one.
    """
    queued = []
    for destination in action["destinations"]:
        already = set(
            session.execute(
                select(DeliveryItem.sop_instance_uid, DeliveryItem.instance_version)
                .join(Delivery, Delivery.id == DeliveryItem.delivery_id)
                .where(Delivery.destination == destination,
                       DeliveryItem.sop_instance_uid.in_([i.sop_instance_uid for i in target.instances]))
            ).all()
        )
        items = [(i.sop_instance_uid, i.path, i.version) for i in target.instances if (i.sop_instance_uid, i.version) not in already]
        if not items:
            queued.append(f"{destination}: nothing new")
            continue
        delivery = enqueue(
            session, dispatch_key=f"forward|{rule_name}|{destination}|{target.level}:{target.uid}|run{target.run}",
            destination=destination, rule_name=rule_name, items=items, now=now, series_id=target.series_id,
        )
        queued.append(f"{destination}: {len(items)} object(s)" if delivery else f"{destination}: already queued")
    return "forward to " + ", ".join(queued)


OUTPUTS_BY_KIND: dict[str, tuple[str, ...]] = {
    "classification": ("sr", "corrected-copy"),
    "detection": ("sr", "erased"),
    "segmentation": ("seg", "sr"),
}
DEFAULT_OUTPUTS = {"classification": ["sr"], "detection": ["sr"], "segmentation": ["seg"]}


def check_model_action(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Validate a ``model`` action against the model registry."""
    from ai_models import ModelError, get_info

    ctx.reject_unknown_keys(params, {"model", "options", "outputs", "destinations", "header_fix_threshold", "omit_empty_frames"})
    name = params.get("model")
    if not isinstance(name, str) or not name:
        raise ActionError("'model' is required (a model name from `dicom-node models list`)")
    try:
        info = get_info(name)
    except ModelError as exc:
        raise ActionError(str(exc), key="model", value=name) from None
    options = params.get("options", {})
    if not isinstance(options, dict):
        raise ActionError("'options' must be a table", key="options")
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise ActionError(f"model '{name}' has no option(s) {unknown}; known: {sorted(info.options)}", key="options")
    allowed = OUTPUTS_BY_KIND[info.output_kind]
    outputs = params.get("outputs", DEFAULT_OUTPUTS[info.output_kind])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ActionError("'outputs' must be a list of names", key="outputs")
    for output in outputs:
        if output not in allowed:
            raise ActionError(f"model '{name}' ({info.output_kind}) cannot produce '{output}'; it can: {list(allowed)}", key="outputs", value=output)
    if "corrected-copy" in outputs and not info.header_fix:
        raise ActionError(f"'corrected-copy' needs a header-fix model; '{name}' checks no header field", key="outputs")
    threshold = params.get("header_fix_threshold", 0.8)
    if not isinstance(threshold, (int, float)) or not 0.5 <= float(threshold) <= 1.0:
        raise ActionError("'header_fix_threshold' must be a number between 0.5 and 1", key="header_fix_threshold")
    omit = params.get("omit_empty_frames", False)
    if not isinstance(omit, bool):
        raise ActionError("'omit_empty_frames' must be true or false", key="omit_empty_frames")
    destinations = ctx.destinations_of(params, required=bool(outputs))
    return {
        "model": name, "options": dict(options), "outputs": list(outputs), "destinations": destinations,
        "header_fix_threshold": float(threshold), "omit_empty_frames": omit,
    }


# The action types the node's rules may use: pass it wherever the node parses rules.
NODE_ACTIONS: ActionRegistry = builtin_registry().with_type("model", check_model_action)


def queue_model_job(session: Session, target: Target, rule_name: str, action: dict[str, Any], now: datetime) -> str:
    """Dispatcher handler: one job per (target, rule, run); a repeated dispatch queues nothing."""
    key = (Job.series_id == target.series_id) if target.level == "series" else (Job.study_id == target.study_id) & Job.series_id.is_(None)
    existing = session.scalar(select(Job.id).where(key, Job.rule_name == rule_name, Job.run_number == target.run))
    if existing is not None:
        return f"model {action['model']}: job {existing} already queued"
    job = Job(
        series_id=target.series_id, study_id=target.study_id, rule_name=rule_name, action=action, state=JobState.PENDING,
        run_number=target.run, attempts=0, created_at=now,
    )
    session.add(job)
    session.flush()
    return f"model {action['model']}: job {job.id} queued"


# What the dispatcher runs for each action type of a fired rule.
ACTION_HANDLERS: dict[str, ActionHandler] = {"forward": forward_action, "model": queue_model_job}
