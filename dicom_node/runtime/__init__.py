"""Running the node: the processes of ``dicom-node serve``, their start and stop, and all start-up recovery.

Owns: the service (:mod:`.service`: the receiver child, the APScheduler
sweeps, delivery workers, job supervisor, web server) and every repair
after a crash (:mod:`.recovery`).

Runs in: the node's parent process.  May import every stage and the web
server; nothing but the CLI imports it.
"""
