"""Delivery: the queue of deliveries, the worker threads, and the senders (C-STORE SCU, folder copy).

Owns: delivery rows and their state machine (:mod:`.queue`), the worker
threads that claim and send batches (:mod:`.workers`), sending files to a
destination and C-ECHO (:mod:`.send`), and the node's lean C-STORE SCU
(:mod:`.store_scu`).

Runs in: the node's parent process (worker threads), the CLI (``send``,
``echo``) and the self test.  May import receive for the spool file
format; must not import routing, jobs, ops, runtime, web or cli.
"""
