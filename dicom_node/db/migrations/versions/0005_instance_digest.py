"""instances.digest: the stored copy's content, so a byte-identical resend changes nothing

Copies stored before this revision have no digest (NULL): a resend of one of
them counts as a changed copy, as every resend did before.

Revision ID: 0005_instance_digest
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_instance_digest"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(sa.Column("digest", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        batch_op.drop_column("digest")
