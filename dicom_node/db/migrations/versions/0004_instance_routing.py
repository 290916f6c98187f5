"""instances.routed_version: which copy instance-level rules have seen; delivery items by UID

Instance-level rules forward in every sweep, and each forward asks which
copies the destination already has: without an index on the UID that
question reads every delivery item ever queued.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(sa.Column("routed_version", sa.Integer(), nullable=True))
    # Everything stored before instance-level rules existed counts as routed: a new rule
    # must not forward the archive the first time a late object touches an old series.
    op.execute("UPDATE instances SET routed_version = version")
    op.create_index(
        "ix_instances_unrouted", "instances", ["id"],
        sqlite_where=sa.text("routed_version IS NULL"), postgresql_where=sa.text("routed_version IS NULL"),
    )
    op.create_index("ix_delivery_items_sop_instance_uid", "delivery_items", ["sop_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_delivery_items_sop_instance_uid", table_name="delivery_items")
    op.drop_index("ix_instances_unrouted", table_name="instances")
    with op.batch_alter_table("instances") as batch_op:
        batch_op.drop_column("routed_version")
