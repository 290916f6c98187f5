"""The job supervisor (in the node's parent process): keeps model workers alive and enforces the job timeout.

It kills the worker whose job overran (a model stuck in native code cannot
be interrupted otherwise), marks the job failed and starts a fresh worker;
a worker that died fails its running job with the exit code.
"""
from __future__ import annotations

import logging
import multiprocessing
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path

from sqlalchemy import select

from dicom_node.clock import utcnow
from dicom_node.config import NodeConfig
from dicom_node.db import Database, Job
from dicom_node.db.states import JobState
from dicom_node.jobs.worker import run_worker

log = logging.getLogger("dicom_node.jobs.supervisor")


class JobSupervisor:
    """Keeps ``jobs.workers`` worker processes alive and enforces the job timeout."""

    def __init__(self, config_path: Path, config: NodeConfig, db: Database) -> None:
        self.config_path, self.config, self.db = config_path, config, db
        self._procs: dict[str, BaseProcess] = {}
        self._ctx = multiprocessing.get_context("spawn")

    def _spawn(self, name: str) -> None:
        proc = self._ctx.Process(target=run_worker, args=(str(self.config_path), name), name=name, daemon=False)
        proc.start()
        self._procs[name] = proc

    def start(self) -> None:
        """Nothing to start yet: workers start with the first pending job (``check``).

        Starting them lazily keeps a node without model rules small (a worker
        imports torch: ~150 MB) and keeps start-up from competing with the
        receiver for the CPU.  Jobs interrupted by a previous process were
        put back by start-up recovery (:func:`dicom_node.jobs.queue.recover`).
        """

    def check(self) -> None:
        """Called periodically: restart dead workers, stop overrunning jobs."""
        limit = timedelta(seconds=self.config.jobs.timeout_seconds)
        now = utcnow()
        with self.db.session() as session:
            overrun = session.execute(
                select(Job.id, Job.worker).where(Job.state == JobState.RUNNING, Job.started_at < now - limit)
            ).all()
        for job_id, worker in overrun:
            name = (worker or "").split(":")[0]
            proc = self._procs.get(name)
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(10)
            with self.db.write() as session:
                job = session.get(Job, job_id)
                if job is not None and job.state == JobState.RUNNING:
                    job.state, job.finished_at = JobState.FAILED, utcnow()
                    job.error = f"timeout: still running after {self.config.jobs.timeout_seconds:g}s; the worker was stopped"
            log.error("job %d exceeded the %gs timeout; worker %s stopped", job_id, self.config.jobs.timeout_seconds, name)
        if not self._procs:
            with self.db.session() as session:
                waiting = session.scalar(select(Job.id).where(Job.state == JobState.PENDING).limit(1))
            if waiting is not None:
                for i in range(self.config.jobs.workers):
                    self._spawn(f"model-worker-{i}")
                log.info("started %d model worker(s)", self.config.jobs.workers)
        for name, proc in list(self._procs.items()):
            if not proc.is_alive():
                log.warning("model worker %s exited (code %s); starting a new one", name, proc.exitcode)
                with self.db.write() as session:
                    for job in session.scalars(select(Job).where(Job.state == JobState.RUNNING, Job.worker.like(f"{name}:%"))).all():
                        job.state, job.error, job.finished_at = JobState.FAILED, f"model worker died (exit code {proc.exitcode})", utcnow()
                self._spawn(name)

    def stop(self) -> None:
        for proc in self._procs.values():
            proc.terminate()
        for proc in self._procs.values():
            proc.join(10)
            if proc.is_alive():
                proc.kill()
