"""Model jobs: worker processes that claim job rows, run the model, write and queue the results.

Reception never waits for inference: jobs run in worker processes of their
own (spawned by ``serve``), which keep their models loaded between jobs.
Claiming is a conditional UPDATE, as for deliveries.  The supervisor in the
parent process enforces the per-job timeout by killing the worker that
overran (a model stuck in native code cannot be interrupted otherwise),
marks the job failed, and starts a fresh worker.  A failed job never blocks
reception or other jobs; ``dicom-node retry --job ID`` runs it again.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select, update

from dicom_node.config import NodeConfig
from dicom_node.db import Database, Instance, Job, Series, Study
from dicom_node.delivery import enqueue, utcnow

log = logging.getLogger("dicom_node.jobs")


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
        from ai_models.cli import conventional_weight_path

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


def execute(db: Database, config: NodeConfig, cache: ModelCache, job_id: int) -> str:
    """Run one claimed job to a terminal state (or back to pending for a retry)."""
    from ai_models import InputError, get_info

    from dicom_node.job_outputs import RunContext, build_outputs, summarize

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
    try:
        name = action["model"]
        info = get_info(name)
        loaded = cache.get(name, action.get("options", {}))
        timings["load_s"] = time.perf_counter() - start
        t = time.perf_counter()
        datasets = [pydicom.dcmread(p) for p in paths]
        timings["read_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if info.input_kind == "image":
            results = [loaded.model.predict(ds) for ds in datasets]
        else:
            results = [loaded.model.predict(datasets)]
        timings["inference_s"] = time.perf_counter() - t
        t = time.perf_counter()
        replaces = config.completion_for(called).late_instances == "replace"
        outputs = build_outputs(datasets, results, action, RunContext(config.uid_root, rule_name, loaded.version, run, replaces))
        folder = config.storage.results / f"job-{job_id}"
        written = [(str(ds.SOPInstanceUID), str(_write_result(folder, ds))) for ds in outputs]
        timings["outputs_s"] = time.perf_counter() - t
        summary = summarize(results)
        summary["outputs"] = [{"sop_instance_uid": uid, "modality": str(ds.Modality)} for (uid, _), ds in zip(written, outputs)]
        summary["model"], summary["model_version"] = name, loaded.version
    except Exception as exc:  # noqa: BLE001 - a job must always reach a state
        permanent = isinstance(exc, (JobFailure, InputError))
        message = f"{type(exc).__name__}: {exc}"
        if not permanent:
            log.debug("job %d traceback:\n%s", job_id, traceback.format_exc())
        with db.write() as session:
            job = session.get(Job, job_id)
            assert job is not None
            retry = not permanent and attempts < config.jobs.max_attempts
            job.state, job.error = ("pending" if retry else "failed"), message
            job.finished_at = None if retry else utcnow()
            job.timings = {k: round(v, 3) for k, v in timings.items()}
        log.error("job %d (%s on rule %s) %s: %s", job_id, action.get("model"), rule_name, "will be retried" if retry else "failed", message)
        return "pending" if retry else "failed"
    timings["total_s"] = time.perf_counter() - start
    now = utcnow()
    with db.write() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for destination in action.get("destinations", []) if written else []:
            enqueue(session, dispatch_key=f"job|{job_id}|{written[0][0]}|{destination}", destination=destination, rule_name=rule_name,
                    items=[(uid, path, 1) for uid, path in written], now=now, series_id=job.series_id, job_id=job_id)
        job.state, job.finished_at, job.error = "done", now, None
        job.result = summary
        job.timings = {k: round(v, 3) for k, v in timings.items()}
    log.info("job %d %s done in %.2fs: %d output(s) %s", job_id, name, timings["total_s"], len(written),
             {k: round(v, 2) for k, v in timings.items()})
    return "done"


def claim_next_job(db: Database, worker: str) -> int | None:
    now = utcnow()
    with db.write() as session:
        for job_id in session.scalars(select(Job.id).where(Job.state == "pending").order_by(Job.id).limit(5)).all():
            claimed = session.execute(
                update(Job).where(Job.id == job_id, Job.state == "pending")
                .values(state="running", started_at=now, attempts=Job.attempts + 1, worker=worker)
            ).rowcount
            if claimed:
                return job_id
    return None


def run_worker(config_path: str, name: str) -> None:
    """Entry point of a worker process: claim, run, repeat; models stay loaded."""
    from dicom_node.config import load_config
    from dicom_node.service import _die_with_parent, setup_logging

    _die_with_parent()
    config = load_config(config_path)
    setup_logging(config.log_level)
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, config.jobs.workers)))
    db = Database(config.database_url, migrate=False)
    cache = ModelCache(config)
    worker = f"{name}:{os.getpid()}"
    while True:
        job_id = claim_next_job(db, worker)
        if job_id is None:
            time.sleep(config.jobs.poll_seconds)
            continue
        execute(db, config, cache, job_id)


class JobSupervisor:
    """Keeps ``jobs.workers`` worker processes alive and enforces the job timeout."""

    def __init__(self, config_path: Path, config: NodeConfig, db: Database) -> None:
        self.config_path, self.config, self.db = config_path, config, db
        self._procs: dict[str, multiprocessing.Process] = {}
        self._ctx = multiprocessing.get_context("spawn")

    def _spawn(self, name: str) -> None:
        proc = self._ctx.Process(target=run_worker, args=(str(self.config_path), name), name=name, daemon=False)
        proc.start()
        self._procs[name] = proc

    def start(self) -> None:
        """Recover interrupted jobs; workers start with the first job (``check``).

        Starting them lazily keeps a node without model rules small (a worker
        imports torch: ~150 MB) and keeps start-up from competing with the
        receiver for the CPU.
        """
        self.recover()

    def recover(self) -> None:
        """Jobs left ``running`` by a previous process go back to the queue (or fail when out of attempts)."""
        with self.db.write() as session:
            for job in session.scalars(select(Job).where(Job.state == "running")).all():
                if job.attempts >= self.config.jobs.max_attempts:
                    job.state, job.error, job.finished_at = "failed", "interrupted by a node restart", utcnow()
                else:
                    job.state = "pending"

    def check(self) -> None:
        """Called periodically: restart dead workers, stop overrunning jobs."""
        limit = timedelta(seconds=self.config.jobs.timeout_seconds)
        now = utcnow()
        with self.db.session() as session:
            overrun = session.execute(
                select(Job.id, Job.worker).where(Job.state == "running", Job.started_at < now - limit)
            ).all()
        for job_id, worker in overrun:
            name = (worker or "").split(":")[0]
            proc = self._procs.get(name)
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(10)
            with self.db.write() as session:
                job = session.get(Job, job_id)
                if job is not None and job.state == "running":
                    job.state, job.finished_at = "failed", utcnow()
                    job.error = f"timeout: still running after {self.config.jobs.timeout_seconds:g}s; the worker was stopped"
            log.error("job %d exceeded the %gs timeout; worker %s stopped", job_id, self.config.jobs.timeout_seconds, name)
        if not self._procs:
            with self.db.session() as session:
                waiting = session.scalar(select(Job.id).where(Job.state == "pending").limit(1))
            if waiting is not None:
                for i in range(self.config.jobs.workers):
                    self._spawn(f"model-worker-{i}")
                log.info("started %d model worker(s)", self.config.jobs.workers)
        for name, proc in list(self._procs.items()):
            if not proc.is_alive():
                log.warning("model worker %s exited (code %s); starting a new one", name, proc.exitcode)
                with self.db.write() as session:
                    for job in session.scalars(select(Job).where(Job.state == "running", Job.worker.like(f"{name}:%"))).all():
                        job.state, job.error, job.finished_at = "failed", f"model worker died (exit code {proc.exitcode})", utcnow()
                self._spawn(name)

    def stop(self) -> None:
        for proc in self._procs.values():
            proc.terminate()
        for proc in self._procs.values():
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def retry_jobs(db: Database, job_ids: list[int]) -> int:
    """Queue jobs again (an operator's retry); returns how many."""
    with db.write() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(job_ids), Job.state.in_(("failed", "done")))).all()
        for job in jobs:
            job.state, job.attempts, job.error, job.finished_at = "pending", 0, None, None
        return len(jobs)
