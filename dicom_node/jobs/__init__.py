"""Model jobs: the queue of job rows, the worker processes that run models, and their supervisor.

Owns: claiming, retrying and recovering job rows (:mod:`.queue`), running
one job (:mod:`.execute`), the worker process loop (:mod:`.worker`), the
supervisor in the parent that enforces timeouts (:mod:`.supervisor`), the
typed result a job records (:mod:`.results`) and the wiring from model
results to DICOM outputs (:mod:`.outputs`).

Runs in: model worker processes (execute, worker) and the parent
(supervisor).  torch is imported only by the worker, never at module level
here.  Must not import routing, ops, runtime, web or cli.
"""
