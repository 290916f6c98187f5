"""A model worker process: claim a job, run it, repeat; models stay loaded between jobs.

Spawned by :class:`dicom_node.jobs.supervisor.JobSupervisor`.  torch is
imported here and only here in the node, so the parent and the receiver
never map it.
"""
from __future__ import annotations

import os
import time

from dicom_node.config import load_config
from dicom_node.db import Database
from dicom_node.jobs.execute import ModelCache, execute
from dicom_node.jobs.queue import claim_next_job
from dicom_node.processes import die_with_parent, setup_logging


def run_worker(config_path: str, name: str) -> None:
    """Entry point of a worker process: claim, run, repeat; models stay loaded."""
    die_with_parent()
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
