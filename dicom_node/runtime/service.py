"""``dicom-node serve``: the receiver process plus the dispatcher/delivery process.

The receiver runs in a child process of its own (spawned, so it shares no
locks or threads with the parent); the parent runs the APScheduler sweeps
(completion + rules, rule reloads) and the delivery workers.  The child
asks the kernel to kill it when the parent dies, so a SIGKILL of the node
never leaves an orphan receiver holding the port.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node import __version__
from dicom_node.config import NodeConfig, load_config
from dicom_node.defaults import (
    JOB_SUPERVISOR_SECONDS,
    RECEIVER_CHECK_SECONDS,
    RECEIVER_START_SECONDS,
    RECEIVER_STOP_SECONDS,
    RULES_RELOAD_SECONDS,
)
from dicom_node.processes import die_with_parent, setup_logging

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess

    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger("dicom_node")


def run_receiver(config_path: str) -> None:
    """Entry point of the receiver child process."""
    die_with_parent()
    config = load_config(config_path)
    setup_logging(config.log_level)
    import pydicom.config

    # This process decodes a few identifying attributes and lets pynetdicom encode responses; pydicom's
    # per-value validation (regular expressions, warnings only when reading) was about a tenth of its CPU
    # per C-STORE.  The receiver checks what it relies on itself (UIDs present, consistent, writable).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    from dicom_node.db import Database
    from dicom_node.receive.scp import Receiver
    from dicom_node.receive.spool import Spool

    db = Database(config.database_url, migrate=False)
    receiver = Receiver(config, db, Spool(config.storage.spool, fsync=config.storage.fsync))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    receiver.start(block=False)
    stop.wait()
    receiver.stop()
    db.dispose()


def _wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class _CoalescedSweepFilter(logging.Filter):
    """Drop APScheduler's warning that a sweep tick was skipped because the previous sweep still runs.

    The sweep is coalesced on purpose: a tick that finds one running has
    nothing to add (the running one sees the same database), and the warning
    appeared at every large completion, where an operator would read it as a fault.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("skipped: maximum number of running instances" in message and "sweep" in message)


def _pull_forward(scheduler: BaseScheduler, job_id: str, when: datetime) -> None:
    """Run a job at ``when`` (naive UTC) when that is before its next regular run.

    A series' quiet period rarely ends on a sweep tick; running the sweep
    at that moment takes up to one sweep interval off every forward.
    """
    job = scheduler.get_job(job_id)
    # Not earlier than just after the running sweep (the caller) has returned: a run due while it
    # still runs would be skipped, not delayed.
    at = max(when.replace(tzinfo=UTC), datetime.now(UTC) + timedelta(milliseconds=20))
    if job is not None and job.next_run_time is not None and at < job.next_run_time:
        job.modify(next_run_time=at)


class Node:
    """The running node (parent side)."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = Path(config_path)
        self.config: NodeConfig = load_config(self.config_path)
        self.stop_event = threading.Event()

    def _start_receiver(self) -> SpawnProcess:
        ctx = multiprocessing.get_context("spawn")
        process = ctx.Process(target=run_receiver, args=(str(self.config_path),), name="receiver", daemon=False)
        process.start()
        return process

    def run(self) -> int:
        from apscheduler.schedulers.background import BackgroundScheduler

        from ai_models.registry import CatalogChild
        from dicom_node.db import Database
        from dicom_node.delivery.workers import DeliveryWorkers
        from dicom_node.jobs.supervisor import JobSupervisor
        from dicom_node.receive.spool import Spool
        from dicom_node.routing.dispatcher import Dispatcher
        from dicom_node.routing.rule_sources import open_rule_source  # web admin hook: folder or database rules
        from dicom_node.runtime.recovery import recover

        config = self.config
        setup_logging(config.log_level)
        log.info("dicom-node %s starting (config %s)", __version__, self.config_path)
        # This process checks model actions in rules but never runs a model (job workers do): it needs the
        # models' descriptions, not torch, which would be most of its memory. They are read in a child
        # process, which imports while the database is migrated and recovered and the receiver starts.
        catalog = CatalogChild()
        db = Database(config.database_url)
        spool = Spool(config.storage.spool, fsync=config.storage.fsync)
        recover(config, db, spool)
        receiver = self._start_receiver()
        try:  # a failure from here on must not leave the receiver running (and this process waiting for it)
            catalog.apply()
            rules = open_rule_source(config, db)  # web admin hook: [rules] source, plus self-test rules
            workers = DeliveryWorkers(db, config)
            dispatcher = Dispatcher(config, db, rules, on_queued=workers.wake)
            logging.getLogger("apscheduler.scheduler").addFilter(_CoalescedSweepFilter())
            scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 5})
            def sweep() -> None:
                next_fire = dispatcher.sweep()
                if next_fire is not None:
                    _pull_forward(scheduler, "completion-sweep", next_fire)

            scheduler.add_job(sweep, "interval", seconds=config.completion.sweep_seconds, id="completion-sweep")
            scheduler.add_job(rules.reload_if_changed, "interval", seconds=RULES_RELOAD_SECONDS, id="rules-reload")
            supervisor = JobSupervisor(self.config_path, config, db)
            scheduler.add_job(supervisor.check, "interval", seconds=JOB_SUPERVISOR_SECONDS, id="job-supervisor")
        except BaseException:
            receiver.terminate()
            receiver.join(RECEIVER_STOP_SECONDS)
            raise
        if not _wait_for_port(config.bind, config.port, RECEIVER_START_SECONDS):
            log.error("receiver did not start listening on %s:%d", config.bind, config.port)
            receiver.terminate()
            return 1
        workers.start()
        supervisor.start()
        scheduler.start()
        from dicom_node.web.server import start_web  # web admin hook: admin app in a thread ([web])
        web = start_web(config, db, rules)
        log.info("ready: %s listening on %s:%d", ", ".join(listener.ae_title for listener in config.listeners), config.bind, config.port)
        try:
            while not self.stop_event.wait(RECEIVER_CHECK_SECONDS):
                if not receiver.is_alive():
                    log.error("receiver process exited (code %s); restarting it", receiver.exitcode)
                    receiver = self._start_receiver()
        finally:
            log.info("stopping")
            if web is not None:  # web admin hook
                web.stop()
            receiver.terminate()
            receiver.join(RECEIVER_STOP_SECONDS)
            if receiver.is_alive():
                receiver.kill()
            scheduler.shutdown(wait=True)
            supervisor.stop()
            workers.stop()
            db.dispose()
            log.info("stopped")
        return 0


def serve(config_path: Path) -> int:
    node = Node(config_path)
    signal.signal(signal.SIGTERM, lambda *_: node.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: node.stop_event.set())
    return node.run()
