"""Operating the node: the status and count queries, metrics, audited operator actions, the self test, synthetic data.

Owns: the read-only queries every view shares (:mod:`.queries`), the
Prometheus metrics (:mod:`.metrics`), audited operator actions such as
retry and echo (:mod:`.admin_actions`), the end-to-end self test
(:mod:`.selftest`) and synthetic DICOM without patient data
(:mod:`.synthetic`).

Used by: the CLI, the web admin and the metrics endpoint, so that each
figure is computed one way.  May import every stage; must not import
runtime, web or cli.
"""
