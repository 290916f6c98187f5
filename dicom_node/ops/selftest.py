"""End-to-end self test: a synthetic series through the running node, step by step.

What it proves is that the real path works, not a mock of it: the series
(synthetic, no patient data) is sent by C-STORE to the node's own port, the
receiver stores it, the completion sweep closes it, the dispatcher applies
a rule, a model runs if the rule has one, and the sender delivers to the
chosen destination.

Which rule: the administrator picks one, but the synthetic CT cannot be
expected to satisfy any rule's conditions, and the test must not send
anything to the rule's real destinations.  So the node is given a temporary
copy of the chosen rule (name ``selftest-<hex>``) that matches only the test
study's StudyInstanceUID, has the chosen rule's actions with their
destinations replaced by the chosen destination, runs before every other
rule and stops evaluation (no other rule sees the test study).  Whether the
chosen rule itself would match the synthetic series is shown too.

The copy lives in ``selftest_runs``; :class:`dicom_node.routing.rule_sources.SelfTestRules` lays the
active ones over the node's rule source (folder or database) at each reload
(2 s) and records when the node picked a run up.  Progress is read back from
the router's own rows (instances, series, dispatches, jobs, deliveries), so
the CLI and the web page show the same thing.
"""
from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.clock import utcnow
from dicom_node.config import DicomDestination, NodeConfig
from dicom_node.db import Database, Delivery, Dispatch, Instance, Job, Series
from dicom_node.db.admin_models import SelfTestRun, record_audit
from dicom_node.db.states import DeliveryState, JobState, SelfTestState
from dicom_node.routing.actions import NODE_ACTIONS
from routing_rules import RuleSet, parse_rules_text
from routing_rules.dump import toml_value

log = logging.getLogger("dicom_node.ops.selftest")

SLICES, SIZE = 3, 64  # small: the test is about the path, not throughput
TEMP_ORDER = -1_000_000


class SelfTestError(ValueError):
    """The self test cannot start (unknown rule or destination, invalid rule)."""


# --- creating a run -----------------------------------------------------------------------------------


def temporary_rule_text(name: str, rule: Any, destination: str, study_uid: str) -> str:
    """The text of the temporary copy of ``rule`` (see the module docstring)."""
    actions = []
    for action in rule.actions:
        table = action.to_dict()
        if "destinations" in table:
            table["destinations"] = [destination]
        actions.append(table)
    if not any("destinations" in a for a in actions):
        actions.append({"type": "forward", "destinations": [destination]})
    lines = [
        "[[rule]]",
        f"name = {toml_value(name)}",
        f"description = {toml_value(f'temporary self-test copy of rule {rule.name}')}",
        f"order = {TEMP_ORDER}",
        "stop = true",
        "",
        "[rule.match]",
        f"StudyInstanceUID = {toml_value(study_uid)}",
    ]
    for table in actions:
        lines += ["", "[[rule.actions]]", *(f"{key} = {toml_value(value)}" for key, value in table.items())]
    return "\n".join(lines) + "\n"


def create_run(
    config: NodeConfig, db: Database, ruleset: RuleSet, rule_name: str, destination: str, *, author: str,
    client: str | None = None, timeout_seconds: float | None = None,
) -> int:
    """Validate the choice and register a run; the node picks its rule up at its next reload."""
    from pydicom.uid import generate_uid

    from dicom_node.ops.synthetic import UID_PREFIX

    rule = ruleset.get(rule_name)
    if rule is None:
        known = ", ".join(r.name for r in ruleset.rules) or "none"
        raise SelfTestError(f"unknown or invalid rule {rule_name!r} (valid rules: {known})")
    if destination not in config.destinations:
        raise SelfTestError(f"unknown destination {destination!r} (known: {', '.join(sorted(config.destinations)) or 'none'})")
    study_uid = generate_uid(prefix=UID_PREFIX)
    name = f"selftest-{secrets.token_hex(4)}"
    text = temporary_rule_text(name, rule, destination, study_uid)
    parsed = parse_rules_text(text, "selftest", set(config.destinations), NODE_ACTIONS)
    if parsed.errors or len(parsed.rules) != 1:
        raise SelfTestError("cannot build the temporary rule: " + "; ".join(str(e) for e in parsed.errors))
    now = utcnow()
    timeout = timeout_seconds or default_timeout(config)
    with db.write() as session:
        run = SelfTestRun(
            created_at=now, expires_at=now + timedelta(seconds=timeout + 60), author=author, rule_name=rule_name,
            destination=destination, study_uid=study_uid, series_uid="", instances=SLICES, rule_text=text, state=SelfTestState.WAITING,
            notes=[],
        )
        session.add(run)
        session.flush()
        record_audit(session, "selftest", username=author, target=f"{rule_name} -> {destination}", client=client,
                     details={"run": run.id, "temporary_rule": name})
        return run.id


def default_timeout(config: NodeConfig) -> float:
    """Long enough for the quiet period, a model run and a delivery retry."""
    return config.completion.series_quiet_seconds + 90.0


# --- progress -----------------------------------------------------------------------------------------


@dataclass
class Step:
    """One stage of the run: ``done``, ``waiting``, ``failed`` or ``skipped``."""

    name: str
    state: str
    at: datetime | None = None
    detail: str = ""

    def as_dict(self, origin: datetime | None) -> dict[str, Any]:
        seconds = (self.at - origin).total_seconds() if self.at and origin else None
        return {"name": self.name, "state": self.state, "at": self.at.isoformat() + "Z" if self.at else None,
                "seconds": None if seconds is None else round(seconds, 3), "detail": self.detail}


def temporary_rule(run: SelfTestRun) -> Any:
    """The run's temporary rule (None if its text no longer parses here)."""
    parsed = parse_rules_text(run.rule_text, "selftest", None, NODE_ACTIONS)
    return parsed.rules[0] if parsed.rules else None


def progress(session: Session, run: SelfTestRun) -> list[Step]:
    """The steps of a run as the router's rows show them now."""
    steps = [Step("rule loaded by the node", "done" if run.activated_at else "waiting", run.activated_at,
                  "" if run.activated_at else "the node reloads rules every 2 s; is it running?")]
    if run.sent_at is None:
        steps.append(Step("sent (C-STORE to the node)", "failed" if run.state == SelfTestState.FAILED else "waiting", None, run.error or ""))
        return steps
    sent_done = run.sent_at + timedelta(seconds=run.send_seconds or 0)
    steps.append(Step("sent (C-STORE to the node)", "done", sent_done, f"{run.instances} instance(s) in {run.send_seconds or 0:.2f} s"))
    series = session.scalar(select(Series).where(Series.series_instance_uid == run.series_uid)) if run.series_uid else None
    stored = 0
    last = None
    if series is not None:
        stored, last = session.execute(select(func.count(Instance.id), func.max(Instance.received_at)).where(Instance.series_id == series.id)).one()
    steps.append(Step("received and stored", "done" if stored >= run.instances else "waiting", last if stored >= run.instances else None,
                      f"{stored} of {run.instances} instance(s) in the spool"))
    completed = series.completed_at if series is not None else None
    steps.append(Step("series complete", "done" if completed else "waiting", completed,
                      (series.completion_reason or "") if completed and series is not None else "quiet period running"))
    rule = temporary_rule(run)
    temp = rule.name if rule is not None else ""
    dispatch = None
    if series is not None:
        dispatch = session.scalar(select(Dispatch).where(Dispatch.series_id == series.id, Dispatch.rule_name == temp).order_by(Dispatch.id).limit(1))
    steps.append(Step("dispatched by the rule", "done" if dispatch else "waiting", dispatch.created_at if dispatch else None,
                      "; ".join(dispatch.reasons) if dispatch else ""))
    if series is not None and rule is not None and any(a.type == "model" for a in rule.actions):
        jobs = session.scalars(select(Job).where(Job.series_id == series.id, Job.rule_name == temp)).all()
        if not jobs:
            steps.append(Step("model run", "waiting", None, "no job yet"))
        else:
            failed_jobs = [j for j in jobs if j.state == JobState.FAILED]
            done = all(j.state == JobState.DONE for j in jobs)
            state = "failed" if failed_jobs else "done" if done else "waiting"
            at = max((j.finished_at for j in jobs if j.finished_at), default=None)
            detail = failed_jobs[0].error or "" if failed_jobs else ", ".join(f"job {j.id} {j.state}" for j in jobs)
            steps.append(Step("model run", state, at if state != "waiting" else None, detail))
    deliveries = session.scalars(select(Delivery).where(Delivery.rule_name == temp)).all() if temp else []
    if not deliveries:
        steps.append(Step(f"delivered to {run.destination}", "waiting", None, "nothing queued yet"))
    else:
        failed = [d for d in deliveries if d.state == DeliveryState.FAILED]
        if failed:
            steps.append(Step(f"delivered to {run.destination}", "failed", failed[0].finished_at, failed[0].last_error or ""))
        elif all(d.state == DeliveryState.DELIVERED for d in deliveries):
            at = max(d.finished_at for d in deliveries if d.finished_at)
            objects = sum(len(d.items) for d in deliveries)
            steps.append(Step(f"delivered to {run.destination}", "done", at, f"{objects} object(s) in {len(deliveries)} deliver{'y' if len(deliveries) == 1 else 'ies'}"))
        else:
            pending = deliveries[0]
            steps.append(Step(f"delivered to {run.destination}", "waiting", None,
                              f"{pending.state}, attempt {pending.attempts}" + (f": {pending.last_error}" if pending.last_error else "")))
    return steps


def run_report(db: Database, run_id: int) -> dict[str, Any] | None:
    """JSON-ready state of a run (for the page's polling and the API)."""
    with db.session() as session:
        run = session.get(SelfTestRun, run_id)
        if run is None:
            return None
        steps = progress(session, run)
        return {
            "id": run.id, "state": run.state, "rule": run.rule_name, "destination": run.destination, "author": run.author,
            "created_at": run.created_at.isoformat() + "Z", "study_uid": run.study_uid, "error": run.error,
            "notes": run.notes or [], "steps": [s.as_dict(run.sent_at) for s in steps],
        }


# --- running it -----------------------------------------------------------------------------------------


def _own_node(config: NodeConfig) -> tuple[DicomDestination, str]:
    """The node as a C-STORE peer, and a calling AE title its first listener accepts."""
    listener = config.listeners[0]
    host = "127.0.0.1" if config.bind in ("0.0.0.0", "::") else config.bind
    allowed = [a for a in listener.allowed_calling_aets if a != "*"]
    calling = "DICOM_NODE_SCU" if "DICOM_NODE_SCU" in allowed or not allowed else allowed[0]
    return DicomDestination(name="node", ae_title=listener.ae_title, host=host, port=config.port), calling


def _update(db: Database, run_id: int, **values: Any) -> None:
    with db.write() as session:
        run = session.get(SelfTestRun, run_id)
        if run is not None:
            for key, value in values.items():
                setattr(run, key, value)


def execute(
    config: NodeConfig, db: Database, run_id: int, *, ruleset: RuleSet | None = None,
    on_progress: Callable[[list[Step]], None] | None = None, poll_seconds: float = 0.25,
    activation_timeout: float = 15.0, timeout_seconds: float | None = None,
) -> SelfTestState:
    """Drive a registered run to its end; returns ``passed`` or ``failed``."""
    from dicom_node.delivery.send import ItemResult, SendError, send
    from dicom_node.ops.synthetic import chest_ct_series, write_datasets
    from routing_rules.headers import SeriesHeaders

    timeout = timeout_seconds or default_timeout(config)
    with db.session() as session:
        run = session.get(SelfTestRun, run_id)
        assert run is not None
        study_uid, rule_name = run.study_uid, run.rule_name
    notes: list[str] = []
    datasets = chest_ct_series(SLICES, SIZE, study_uid=study_uid, patient_id="SELFTEST")
    chosen = ruleset.get(rule_name) if ruleset is not None else None
    if ruleset is not None and chosen is not None and chosen.level == "series":
        explanations = ruleset.explain(SeriesHeaders.from_datasets(datasets), level="series")
        explanation = next(e for e in explanations if e.rule.name == rule_name)
        notes.append(f"the chosen rule itself on this synthetic CT: {explanation}")
    elif ruleset is not None and chosen is not None and chosen.level == "instance":
        fired = next((count for e, count in ruleset.explain_instances(datasets) if e.rule.name == rule_name), 0)
        notes.append(f"the chosen rule itself fires for {fired} of {len(datasets)} objects of this synthetic CT; "
                     "the temporary copy routes the test series at series level")
    elif chosen is not None:
        notes.append(f"rule {rule_name} is a {chosen.level}-level rule; the temporary copy routes the test series at series level")
    _update(db, run_id, series_uid=str(datasets[0].SeriesInstanceUID), notes=notes)

    deadline = time.monotonic() + activation_timeout
    while True:
        with db.session() as session:
            activated = session.get(SelfTestRun, run_id).activated_at  # type: ignore[union-attr]
        if activated is not None:
            break
        if time.monotonic() > deadline:
            _update(db, run_id, state=SelfTestState.FAILED, finished_at=utcnow(),
                    error=f"the node did not load the self-test rule within {activation_timeout:.0f} s: is it running with this database?")
            return SelfTestState.FAILED
        time.sleep(poll_seconds)

    peer, calling = _own_node(config)
    failures: list[str] = []

    def on_result(result: ItemResult) -> None:
        if not result.ok:
            failures.append(result.error or "refused")

    with tempfile.TemporaryDirectory(prefix="dicom-node-selftest-") as tmp:
        paths = [str(p) for p in write_datasets(datasets, Path(tmp), "SELFTEST")]
        started = utcnow()
        clock = time.perf_counter()
        _update(db, run_id, state=SelfTestState.RUNNING)
        try:
            send(peer, paths, calling, on_result)
        except SendError as exc:
            failures.append(str(exc))
        took = time.perf_counter() - clock
    if failures:
        _update(db, run_id, state=SelfTestState.FAILED, finished_at=utcnow(), sent_at=started, send_seconds=took,
                error=f"sending to the node ({calling} -> {peer.ae_title}@{peer.host}:{peer.port}) failed: {failures[0]}")
        return SelfTestState.FAILED
    _update(db, run_id, sent_at=started, send_seconds=took)

    deadline = time.monotonic() + timeout
    shown: list[tuple[str, str]] = []
    while True:
        with db.session() as session:
            run = session.get(SelfTestRun, run_id)
            assert run is not None
            steps = progress(session, run)
        summary = [(s.name, s.state) for s in steps]
        if on_progress is not None and summary != shown:
            on_progress(steps)
            shown = summary
        if any(s.state == "failed" for s in steps):
            failed = next(s for s in steps if s.state == "failed")
            _update(db, run_id, state=SelfTestState.FAILED, finished_at=utcnow(), error=f"{failed.name}: {failed.detail}")
            return SelfTestState.FAILED
        if all(s.state in ("done", "skipped") for s in steps):
            _update(db, run_id, state=SelfTestState.PASSED, finished_at=utcnow())
            return SelfTestState.PASSED
        if time.monotonic() > deadline:
            waiting = next(s for s in steps if s.state == "waiting")
            _update(db, run_id, state=SelfTestState.FAILED, finished_at=utcnow(), error=f"timed out after {timeout:.0f} s at step '{waiting.name}' ({waiting.detail})")
            return SelfTestState.FAILED
        time.sleep(poll_seconds)


def start_in_background(config: NodeConfig, db: Database, run_id: int, ruleset: RuleSet | None) -> threading.Thread:
    """Run :func:`execute` in a daemon thread (the web page polls the rows meanwhile)."""

    def target() -> None:
        try:
            execute(config, db, run_id, ruleset=ruleset)
        except Exception as exc:  # noqa: BLE001 - the run must end in a state the page can show
            log.exception("self test %d crashed", run_id)
            _update(db, run_id, state=SelfTestState.FAILED, finished_at=utcnow(), error=f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=target, name=f"selftest-{run_id}", daemon=True)
    thread.start()
    return thread


def start(config: NodeConfig, db: Database, ruleset: RuleSet, rule_name: str, destination: str, *, author: str,
          client: str | None = None) -> int:
    """Create a run and execute it in the background (the web page and the API); returns its id."""
    run_id = create_run(config, db, ruleset, rule_name, destination, author=author, client=client)
    start_in_background(config, db, run_id, ruleset)
    return run_id
