"""series.failure_reason, studies.failure_reason: why a series or study could not be dispatched

A series or study whose dispatch raises (an object whose header cannot be
read, for one) is put in state ``failed`` with the reason, so that the
sweep goes on with the others; the reason stays after an operator
dismisses it.

Revision ID: 0006_dispatch_failures
Revises: 0005_instance_digest
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_dispatch_failures"
down_revision = "0005_instance_digest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("series", "studies"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("failure_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    for table in ("studies", "series"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("failure_reason")
