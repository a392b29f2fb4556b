"""Alembic environment: runs the migrations on the connection that ``storage.db.upgrade`` opens.

There is no alembic.ini; the connection arrives in ``config.attributes["connection"]``, inside a
transaction the caller owns. SQLite gets batch mode, since it alters tables by copying them.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from storage.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through storage.db.upgrade(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
