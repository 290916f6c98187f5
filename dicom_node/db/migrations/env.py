"""Alembic environment: uses the engine the node hands over, or the URL."""
from alembic import context
from sqlalchemy import Engine, create_engine

from dicom_node.db.models import Base

config = context.config


def _engine() -> Engine:
    """The node hands over its own engine; alembic's command line gives only the URL."""
    handed: Engine | None = config.attributes.get("engine")
    if handed is not None:
        return handed
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no engine handed over and no sqlalchemy.url configured")
    return create_engine(url)


engine = _engine()

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
