"""Running one claimed model job: load the model (cached), read the series, predict, write and queue the outputs.

A job always reaches a state: done (results written durably, deliveries
queued in the same transaction as the state), pending again (a transient
error with attempts left) or failed (a permanent error, named).  A failed
job never blocks reception or other jobs; ``dicom-node retry --job ID``
runs it again.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select

from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig
from dicom_node.db import Database, Instance, Job, Series, Study
from dicom_node.db.states import JobState
from dicom_node.delivery.queue import enqueue

log = logging.getLogger("dicom_node.jobs.execute")


class JobFailure(Exception):
    """A job cannot succeed as configured (missing weights, unusable input): no retry."""


@dataclass
class LoadedModel:
    model: Any
    version: str


class ModelCache:
    """Models stay loaded between jobs, keyed by name, weight files and options."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._models: dict[tuple, LoadedModel] = {}

    def get(self, name: str, options: dict[str, Any]) -> LoadedModel:
        from ai_models import WeightError, get_info, load_model
        from ai_models.catalog import conventional_weight_path

        info = get_info(name)
        weights = {}
        for spec in info.weights:
            path = conventional_weight_path(self.config.weights_dir, name, spec)
            if path is not None:
                weights[spec.key] = path
        missing = [s.key for s in info.weights if not s.optional and s.key not in weights]
        if missing:
            raise JobFailure(
                f"model {name!r} is unavailable: weight file(s) {missing} not found under "
                f"{self.config.weights_dir / name} (see `dicom-node models list`)"
            )
        key = (name, tuple(sorted((k, str(p), p.stat().st_mtime) for k, p in weights.items())), repr(sorted(options.items())))
        if key not in self._models:
            try:
                model = load_model(name, weights=weights or None, device="auto", **options)
            except WeightError as exc:
                raise JobFailure(f"model {name!r}: {exc}") from exc
            self._models[key] = LoadedModel(model, info.version)
            log.info("loaded model %s v%s (%s)", name, info.version, model)
        return self._models[key]


def _write_result(folder: Path, ds: pydicom.Dataset) -> Path:
    """Write one result durably (temp file, fsync, rename) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{ds.SOPInstanceUID}.dcm"
    tmp = folder / f".{uuid.uuid4().hex}.part"
    ds.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def _sources(session, job: Job) -> list[Instance]:  # type: ignore[no-untyped-def]
    if job.series_id is not None:
        return list(session.scalars(select(Instance).where(Instance.series_id == job.series_id).order_by(Instance.id)).all())
    series_ids = session.scalars(select(Series.id).where(Series.study_id == job.study_id)).all()
    return list(session.scalars(select(Instance).where(Instance.series_id.in_(series_ids)).order_by(Instance.id)).all())


def execute(db: Database, config: NodeConfig, cache: ModelCache, job_id: int) -> JobState:
    """Run one claimed job to a terminal state (or back to pending for a retry)."""
    from ai_models import InputError, get_info
    from dicom_node.jobs.outputs import OutputError, RunContext, build_outputs
    from dicom_node.jobs.results import JobResult, OutputRef, summarize

    timings: dict[str, float] = {}
    start = time.perf_counter()
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        action, rule_name, run, attempts = dict(job.action), job.rule_name, job.run_number, job.attempts
        paths = [i.path for i in _sources(session, job)]
        called = None
        if job.series_id is not None:
            series = session.get(Series, job.series_id)
            called = series.called_ae if series else None
        elif job.study_id is not None:
            study = session.get(Study, job.study_id)
            called = study.called_ae if study else None
    step = "load"  # named in the job error, with the source instance when one is known
    source_uid = ""
    try:
        name = action["model"]
        info = get_info(name)
        loaded = cache.get(name, action.get("options", {}))
        timings["load_s"] = time.perf_counter() - start
        t = time.perf_counter()
        step = "read"
        datasets: list[pydicom.Dataset] = [pydicom.dcmread(p) for p in paths]
        timings["read_s"] = time.perf_counter() - t
        t = time.perf_counter()
        step = "predict"
        if info.input_kind == "image":
            results = []
            for ds in datasets:
                source_uid = str(ds.get("SOPInstanceUID", ""))
                results.append(loaded.model.predict(ds))
            source_uid = ""
        else:
            results = [loaded.model.predict(datasets)]
        timings["inference_s"] = time.perf_counter() - t
        t = time.perf_counter()
        step = "outputs"
        replaces = config.completion_for(called).late_instances == "replace"
        outputs = build_outputs(datasets, results, action, RunContext(config.uid_root, rule_name, loaded.version, run, replaces))
        step = "write"
        folder = config.storage.results / f"job-{job_id}"
        written = [(str(ds.SOPInstanceUID), str(_write_result(folder, ds))) for ds in outputs]
        timings["outputs_s"] = time.perf_counter() - t
        summary = JobResult(summarize(results), tuple(OutputRef(uid, str(ds.Modality)) for (uid, _), ds in zip(written, outputs)),
                            name, loaded.version)
    except Exception as exc:  # noqa: BLE001 - a job must always reach a state
        permanent = isinstance(exc, (JobFailure, InputError))
        if isinstance(exc, OutputError):
            message = str(exc)  # names the output step and the source instance itself
        else:
            message = f"{step}{f' for {source_uid}' if source_uid else ''}: {type(exc).__name__}: {exc}"
        if not permanent:
            log.debug("job %d traceback:\n%s", job_id, traceback.format_exc())
        with db.write() as session:
            job = session.get(Job, job_id)
            assert job is not None
            retry = not permanent and attempts < config.jobs.max_attempts
            job.state, job.error = (JobState.PENDING if retry else JobState.FAILED), message
            job.finished_at = None if retry else utcnow()
            job.timings = {k: round(v, 3) for k, v in timings.items()}
        log.error("job %d (%s on rule %s) %s: %s", job_id, action.get("model"), rule_name, "will be retried" if retry else "failed", message)
        return JobState.PENDING if retry else JobState.FAILED
    timings["total_s"] = time.perf_counter() - start
    now = utcnow()
    with db.write() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for destination in action.get("destinations", []) if written else []:
            enqueue(session, dispatch_key=f"job|{job_id}|{written[0][0]}|{destination}", destination=destination, rule_name=rule_name,
                    items=[(uid, path, 1) for uid, path in written], now=now, series_id=job.series_id, job_id=job_id)
        job.state, job.finished_at, job.error = JobState.DONE, now, None
        job.result = summary.to_json()
        job.timings = {k: round(v, 3) for k, v in timings.items()}
    log.info("job %d %s done in %.2fs: %d output(s) %s", job_id, name, timings["total_s"], len(written),
             {k: round(v, 2) for k, v in timings.items()})
    return JobState.DONE
