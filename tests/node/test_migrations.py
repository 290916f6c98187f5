"""The Alembic migrations build exactly the schema the models describe, and upgrades keep data right."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from dicom_node.db import Database
from dicom_node.db.engine import alembic_config
from dicom_node.db.models import Base


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    with db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.dispose()
    assert differences == []


def test_upgrade_to_instance_routing_counts_stored_objects_as_routed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    command.upgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO studies (id, study_instance_uid, state, first_received_at, last_received_at, run_count) "
                          "VALUES (1, '1.2', 'dispatched', '2026-12-01 10:00:00', '2026-12-01 10:00:00', 1)"))
        conn.execute(text("INSERT INTO series (id, study_id, series_instance_uid, state, instance_count, duplicate_count, late_count, "
                          "run_count, first_received_at, last_received_at) VALUES "
                          "(1, 1, '1.2.3', 'dispatched', 2, 1, 0, 1, '2026-12-01 10:00:00', '2026-12-01 10:00:00')"))
        for n, version in ((1, 1), (2, 2)):
            conn.execute(text("INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, path, size, "
                              f"received_at, version, late) VALUES (1, '1.2.3.{n}', '1.2.840.10008.5.1.4.1.1.1.1', "
                              f"'1.2.840.10008.1.2.1', '/spool/{n}.dcm', 10, '2026-12-01 10:00:00', {version}, 0)"))
    engine.dispose()
    Database(url).dispose()  # migrates to head, as the node does at start
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version, routed_version FROM instances ORDER BY id")).all()
        plan = " ".join(r[-1] for r in conn.execute(text(
            "EXPLAIN QUERY PLAN SELECT id FROM instances WHERE routed_version IS NULL ORDER BY id LIMIT 5")).all())
        already_sent = " ".join(r[-1] for r in conn.execute(text(
            "EXPLAIN QUERY PLAN SELECT instance_version FROM delivery_items WHERE sop_instance_uid IN ('1.2.3.1')")).all())
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, 1), (2, 2)]
    assert "ix_instances_unrouted" in plan  # waiting objects are found without reading the whole table
    assert "ix_delivery_items_sop_instance_uid" in already_sent  # nor every delivery item, per forward
