"""Alembic environment: runs on the engine ``portal.schema`` hands over (``portal db ...``)."""

from alembic import context

from portal.models import Base

engine = context.config.attributes.get("engine")
if engine is None:
    from portal.app import create_app
    from portal.extensions import db

    with create_app().app_context():
        engine = db.engine

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
