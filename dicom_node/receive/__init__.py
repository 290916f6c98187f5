"""Reception: the C-STORE SCP and everything an object needs before the node answers 0x0000.

Owns: the SCP and its association checks (:mod:`.scp`), reading the
identifying attributes from the dataset bytes (:mod:`.identifiers`), the
Part 10 file meta the node writes (:mod:`.file_meta`), the durable spool
(:mod:`.spool`, one flush per object), recording the instance row
(:mod:`.ingest`), and the patches applied to pynetdicom's internals
(:mod:`.pynetdicom_patches`, named as such and tested against the pinned
release).

Runs in: the receiver child process.  Must not import routing, jobs,
delivery, ops, runtime, web or cli: reception never waits for anything
downstream.
"""
