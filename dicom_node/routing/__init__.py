"""Routing: when a series or study is complete, which rules fire, and what each action queues.

Owns: completion (:mod:`.completion`), the dispatcher sweep
(:mod:`.dispatcher`), forwarding as stored (:mod:`.instance_routing`),
header read-ahead during the quiet period (:mod:`.header_readahead`), the
node's actions ``forward`` and ``model``, validated and executed in one
place (:mod:`.actions`), where the rules in force come from (folder,
database, self-test overlay: :mod:`.rule_sources`) and editing database
rules (:mod:`.rule_editing`).

Runs in: the node's parent process (APScheduler sweep), the web admin and
the CLI.  May import receive (row models only), delivery.queue and
jobs.queue to insert rows; must not import ops, runtime, web or cli.
"""
