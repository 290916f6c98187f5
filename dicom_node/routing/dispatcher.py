"""From complete series/studies to queued actions.

One sweep (driven by APScheduler every fraction of a second) applies the
instance-level rules to objects stored since the last sweep (see
:mod:`dicom_node.routing.instance_routing`), marks due series complete, applies the
rules to every complete series and every due study, and queues what the
matching rules ask for.  Queuing and the state
change happen in one transaction, keyed by a dispatch key, so a crash
between the two can neither lose nor double an action.

Action types are pluggable: ``forward`` is built in; the model runtime adds
``model`` (see :mod:`dicom_node.routing.actions`).

Every per-object, per-series, per-study and per-job step of a sweep is
isolated: one that raises is logged once and marked (an object as routed,
a series or study ``failed`` with its reason, see
:mod:`dicom_node.routing.failures`; a job's findings as applied, with the
error on the job), and the sweep goes on with the others.  Nothing that
raised is tried again by the next sweep on its own, so one poison object
cannot stop routing, nor fill the log with one traceback per sweep.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig
from dicom_node.db import Database, Dispatch, Instance, Series, Study
from dicom_node.db.states import JobState, SeriesState, StudyState
from dicom_node.defaults import INSTANCE_PASS_LIMIT
from dicom_node.jobs.results import JobResult
from dicom_node.routing.actions import ACTION_HANDLERS, ActionHandler, Target
from dicom_node.routing.completion import due_studies, mark_complete_series
from dicom_node.routing.failures import Level, mark_failed
from dicom_node.routing.header_readahead import HeaderRead, HeaderReadahead, read_all, read_header
from dicom_node.routing.instance_routing import Unrouted, mark_all_routed, mark_routed, unrouted

if TYPE_CHECKING:
    from routing_rules.ruleset import RuleMatch

log = logging.getLogger("dicom_node.routing.dispatcher")


class DispatchError(Exception):
    """Why a series or study cannot be dispatched, in words for the operator (its ``failure_reason``)."""


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, DispatchError) else f"{type(exc).__name__}: {exc}"


def _no_header(what: str, read: HeaderRead) -> DispatchError:
    path, error = next(iter(read.unreadable.items()), ("", "no stored object"))
    return DispatchError(f"no header of its {len(read.unreadable)} object(s) can be read, so no rule can be applied "
                         f"(e.g. {path}: {error})" if read.unreadable else f"{what} has no stored object")


class RulesSource(Protocol):
    def current(self) -> Any: ...


class Dispatcher:
    """Applies rules to complete series and studies."""

    def __init__(self, config: NodeConfig, db: Database, rules: RulesSource, on_queued: Callable[[], None] = lambda: None) -> None:
        self.config, self.db, self.rules, self.on_queued = config, db, rules, on_queued
        self.handlers: dict[str, ActionHandler] = dict(ACTION_HANDLERS)
        self.readahead = HeaderReadahead()

    def sweep(self) -> datetime | None:
        """Route new objects, complete, dispatch and apply findings.

        Returns when the sweep should run next (naive UTC): when a waiting
        series fires, or now if more objects wait for instance-level rules.
        """
        more = self.route_instances()
        next_fire = self._sweep_completion()
        self.apply_findings()
        return utcnow() if more else next_fire

    def route_instances(self) -> bool:
        """Apply instance-level rules to the objects stored since the last pass; True if more are waiting.

        Each object is judged on its own header, read outside the write
        transaction; the deliveries (one per series, rule and destination)
        and the marks are written in one transaction.  An unreadable file is
        logged once and marked like the others, not retried every sweep.
        """
        from routing_rules.headers import SeriesHeaders

        ruleset = self.rules.current()
        if not any(rule.enabled and rule.level == "instance" for rule in ruleset.rules):
            mark_all_routed(self.db)
            return False
        with self.db.session() as session:
            waiting = unrouted(session)
        if not waiting:
            return False
        fired: dict[tuple[int, str], tuple[RuleMatch, list[Unrouted]]] = {}
        for obj in waiting:
            header = read_header(obj.path)
            if header is None:
                continue
            try:
                matches = ruleset.evaluate(SeriesHeaders.from_datasets([header]), level="instance")
            except Exception as exc:  # noqa: BLE001 - one object the rules cannot judge must not stop the others
                log.error("instance rules cannot judge %s (series %s), skipped: %s", obj.path, obj.series_uid, _reason(exc))
                continue
            for match in matches:
                fired.setdefault((obj.series_id, match.rule.name), (match, []))[1].append(obj)
        now = utcnow()
        groups = list(fired.values())
        try:
            with self.db.write() as session:
                summary = [self._act_on_objects(session, match, objects, now) for match, objects in groups]
                mark_routed(session, waiting)
        except Exception:  # noqa: BLE001 - find the group that raised: each in its own transaction
            summary = self._act_on_objects_one_by_one(groups, now)
            with self.db.write() as session:
                mark_routed(session, waiting)
        done = [line for line in summary if line]
        if done:
            log.info("instance rules: %s", "; ".join(done))
            self.on_queued()
        return len(waiting) >= INSTANCE_PASS_LIMIT

    def _act_on_objects(self, session: Session, match: RuleMatch, objects: list[Unrouted], now: datetime) -> str | None:
        """Run one instance-level rule on the objects of one series it fired for; a summary, or None if none is current."""
        rows = {i.id: i for i in session.scalars(select(Instance).where(Instance.id.in_([o.instance_id for o in objects])))}
        # A copy replaced since it was read is left for the next pass (its mark is NULL again).
        current = [o for o in objects if o.instance_id in rows and rows[o.instance_id].version == o.version]
        if not current:
            return None
        first = current[0]
        target = Target("instance", f"{first.instance_id}.{first.version}", first.run, first.series_id, first.study_id,
                        [rows[o.instance_id] for o in current])
        return f"series {first.series_uid}: {self._act(session, target, match, now, note=f'{len(current)} object(s) as stored')}"

    def _act_on_objects_one_by_one(self, groups: list[tuple[RuleMatch, list[Unrouted]]], now: datetime) -> list[str | None]:
        """After the batch raised: each (rule, series) group in a transaction of its own; one that raises is logged and skipped.

        The objects are marked afterwards, in one transaction: a crash in
        between routes them again, and the dispatch keys keep the groups
        already queued from being queued twice.
        """
        summary: list[str | None] = []
        for match, objects in groups:
            try:
                with self.db.write() as session:
                    summary.append(self._act_on_objects(session, match, objects, now))
            except Exception as exc:  # noqa: BLE001 - the other groups go on
                log.error("instance rule %s on %d object(s) of series %s failed, not retried: %s",
                          match.rule.name, len(objects), objects[0].series_uid, _reason(exc))
        return summary

    def _sweep_completion(self) -> datetime | None:
        now = utcnow()
        with self.db.write() as session:
            found = mark_complete_series(session, self.config, now)
        for series_id in found.completed:
            log.info("series %d complete", series_id)
        with self.db.session() as session:
            pending_series = session.scalars(select(Series.id).where(Series.state == SeriesState.COMPLETE)).all()
        for series_id in pending_series:
            self._isolated("series", series_id, SeriesState.COMPLETE, self.dispatch_series)
        with self.db.session() as session:
            studies = due_studies(session, self.config, utcnow())
        for study_id in studies:
            self._isolated("study", study_id, StudyState.RECEIVING, self.dispatch_study)
        self._read_ahead(found.quiet)
        return found.next_fire

    def _isolated(self, level: Level, row_id: int, expected: SeriesState, dispatch: Callable[[int], None]) -> None:
        """Dispatch one series or study; if that raises, mark it ``failed`` with the reason (one log line) and go on."""
        try:
            dispatch(row_id)
        except Exception as exc:  # noqa: BLE001 - one series or study must not stop the others
            reason = _reason(exc)
            log.debug("%s %d: dispatch raised", level, row_id, exc_info=True)
            with self.db.write() as session:
                failed = mark_failed(session, level, row_id, reason, expected)
            if failed:
                log.error("%s %d cannot be dispatched, marked failed (retry or dismiss it): %s", level, row_id, reason)

    def _read_ahead(self, series_ids: list[int]) -> None:
        """Read headers of series in their quiet period (see :mod:`dicom_node.routing.header_readahead`)."""
        paths: dict[int, list[str]] = {series_id: [] for series_id in series_ids}
        if series_ids:
            with self.db.session() as session:
                for series_id, path in session.execute(
                    select(Instance.series_id, Instance.path).where(Instance.series_id.in_(series_ids))
                ):
                    paths[series_id].append(path)
        self.readahead.read_ahead(paths)

    def _apply(
        self, session: Session, target: Target, headers: list[Dataset], now: datetime,
        findings: dict[str, dict[str, Any]] | None = None, triggered_by: list[str] | None = None,
    ) -> list[str]:
        from routing_rules.headers import SeriesHeaders, StudyHeaders

        ruleset = self.rules.current()
        view: SeriesHeaders | StudyHeaders
        if target.level == "series":
            view = SeriesHeaders.from_datasets(headers, findings=findings)
        else:
            view = StudyHeaders.from_instances(headers, findings=findings)
        if triggered_by is None:
            matches = ruleset.evaluate(view, level=target.level)
        else:
            matches = ruleset.evaluate(view, level=target.level, phase="findings", triggered_by=triggered_by)
        return [self._act(session, target, match, now) for match in matches]

    def _act(self, session: Session, target: Target, match: RuleMatch, now: datetime, note: str | None = None) -> str:
        """Run a fired rule's actions on ``target`` and record the dispatch (audit trail); returns a summary."""
        outcomes = []
        for action in match.actions:
            handler = self.handlers.get(action.type)
            if handler is None:
                outcomes.append(f"action type {action.type!r} not available in this node")
                log.error("rule %s: action type %r has no handler", match.rule.name, action.type)
                continue
            outcomes.append(handler(session, target, match.rule.name, dict(action.params), now))
        session.add(Dispatch(
            level=target.level, series_id=target.series_id, study_id=target.study_id, rule_name=match.rule.name,
            run_number=target.run, reasons=([note] if note else []) + list(match.reasons) + outcomes, created_at=now,
        ))
        return f"{match.rule.name} ({'; '.join(outcomes)})"

    def dispatch_series(self, series_id: int) -> None:
        with self.db.session() as session:
            series = session.get(Series, series_id)
            if series is None or series.state != SeriesState.COMPLETE:
                return
            paths = [i.path for i in series.instances]
        read = self.readahead.take(series_id, paths)
        if not read.datasets:
            raise _no_header("the series", read)
        now = utcnow()
        with self.db.write() as session:
            series = session.get(Series, series_id)
            if series is None or series.state != SeriesState.COMPLETE:
                return  # new instances arrived meanwhile; it will complete again
            run = series.run_count + 1
            target = Target("series", series.series_instance_uid, run, series.id, series.study_id, list(series.instances))
            summary = self._apply(session, target, read.datasets, now)
            series.state, series.run_count, series.dispatched_at = SeriesState.DISPATCHED, run, now
            series.failure_reason = None
        log.info("series %s run %d: %s", target.uid, run, "; ".join(summary) if summary else "no series-level rule matched")
        if summary:
            self.on_queued()

    def dispatch_study(self, study_id: int) -> None:
        with self.db.session() as session:
            study = session.get(Study, study_id)
            if study is None or study.state != StudyState.RECEIVING:
                return
            paths = [i.path for s in study.series for i in s.instances]
        # Reading every header of a large study again costs about a millisecond per instance, in the
        # same process as the deliveries of its series: only pay it when a study-level rule can use them.
        wanted = any(rule.enabled and rule.level == "study" for rule in self.rules.current().rules)
        read = read_all(paths) if wanted else HeaderRead()
        if wanted and not read.datasets:
            raise _no_header("the study", read)
        headers = read.datasets
        now = utcnow()
        with self.db.write() as session:
            study = session.get(Study, study_id)
            if study is None or study.state != StudyState.RECEIVING or any(s.state != SeriesState.DISPATCHED for s in study.series):
                return
            run = study.run_count + 1
            instances = [i for s in study.series for i in s.instances]
            target = Target("study", study.study_instance_uid, run, None, study.id, instances)
            summary = self._apply(session, target, headers, now) if wanted else []
            study.state, study.run_count, study.completed_at = StudyState.DISPATCHED, run, now
            study.failure_reason = None
        if summary:
            log.info("study %s run %d: %s", target.uid, run, "; ".join(summary))
            self.on_queued()

    def apply_findings(self) -> None:
        """Evaluate findings rules once per finished job (e.g. "kidney only if enhanced").

        The findings of a series are the classification results of its done
        jobs in the current run, newest per model; the rules see them as
        ``finding.<model>.<key>`` (see :meth:`dicom_node.jobs.results.ClassificationSummary.finding`).
        """
        from dicom_node.db import Job

        with self.db.session() as session:
            pending = session.execute(
                select(Job.id, Job.series_id, Job.study_id).where(Job.state == JobState.DONE, Job.findings_applied.is_(False)).order_by(Job.id)
            ).all()
        for job_id, series_id, study_id in pending:
            try:
                self._apply_job_findings(job_id, series_id, study_id)
            except Exception as exc:  # noqa: BLE001 - one job's findings must not stop the others'
                self._findings_failed(job_id, _reason(exc))

    def _findings_failed(self, job_id: int, reason: str) -> None:
        """Mark a job's findings applied (so they are not tried at every sweep), with the error on the job; logged once."""
        from dicom_node.db import Job

        with self.db.write() as session:
            job = session.get(Job, job_id)
            if job is None or job.findings_applied:
                return
            job.findings_applied = True
            job.error = f"findings rules not applied: {reason}"[:1000]
        log.error("job %d: findings rules not applied, not retried: %s", job_id, reason)

    def _apply_job_findings(self, job_id: int, series_id: int | None, study_id: int | None) -> None:
        from dicom_node.db import Job

        with self.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            model = str(job.action.get("model"))
            has_classification = JobResult.from_json(job.result).classification is not None
            if series_id is not None:
                series = session.get(Series, series_id)
                paths = [i.path for i in series.instances] if series else []
            else:
                study = session.get(Study, study_id)
                paths = [i.path for s in study.series for i in s.instances] if study else []
            findings = collect_findings(session, series_id, study_id, job.run_number) if has_classification else {}
        headers = read_all(paths).datasets if has_classification and paths else []
        now = utcnow()
        with self.db.write() as session:
            job = session.get(Job, job_id)
            if job is None or job.findings_applied:
                return
            job.findings_applied = True
            if not has_classification or not headers:
                return
            if series_id is not None:
                series = session.get(Series, series_id)
                if series is None:
                    return
                target = Target("series", series.series_instance_uid, job.run_number, series.id, series.study_id, list(series.instances))
            else:
                study = session.get(Study, study_id)
                if study is None:
                    return
                target = Target("study", study.study_instance_uid, job.run_number, None, study.id,
                                [i for s in study.series for i in s.instances])
            summary = self._apply(session, target, headers, now, findings=findings, triggered_by=[model])
        if summary:
            log.info("%s %s findings of %s: %s", target.level, target.uid, model, "; ".join(summary))
            self.on_queued()


def collect_findings(session: Session, series_id: int | None, study_id: int | None, run: int) -> dict[str, dict[str, Any]]:
    """model -> its finding (:meth:`ClassificationSummary.finding`) from the done jobs of one run, newest per model."""
    from dicom_node.db import Job

    key = (Job.series_id == series_id) if series_id is not None else (Job.study_id == study_id) & Job.series_id.is_(None)
    findings: dict[str, dict[str, Any]] = {}
    for job in session.scalars(select(Job).where(key, Job.state == JobState.DONE, Job.run_number == run).order_by(Job.id)).all():
        classification = JobResult.from_json(job.result).classification
        if classification is not None:
            findings[job.action["model"]] = classification.finding()
    return findings
