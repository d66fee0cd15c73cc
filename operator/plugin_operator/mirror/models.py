"""The two platform tables the operator mirrors into (design §7), as the
platform's DDL declares them. Foreign keys to `workspaces` are the platform's
business and are not modelled: the operator never creates that table."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Index, MetaData, Text, Uuid, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PENDING_PREDICATE = "status = 'pending'"


class Base(DeclarativeBase):
    metadata = MetaData()


class WorkspacePlugin(Base):
    __tablename__ = "workspace_plugins"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, server_default=text("gen_random_uuid()"))
    workspace_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    plugin_name: Mapped[str] = mapped_column(Text, nullable=False)
    source_raw: Mapped[str] = mapped_column(Text, nullable=False)
    tracked_ref: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'none'"))
    installed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("now()")
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    installed_sha: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("workspace_plugins_workspace_name", "workspace_id", "plugin_name", unique=True),)


class PluginUpdateQueue(Base):
    __tablename__ = "plugin_update_queue"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, server_default=text("gen_random_uuid()"))
    workspace_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    plugin_name: Mapped[str] = mapped_column(Text, nullable=False)
    tracked_ref: Mapped[str] = mapped_column(Text, nullable=False)
    current_sha: Mapped[str] = mapped_column(Text, nullable=False)
    latest_sha: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'pending'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=text("now()"))

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'applied', 'dismissed')", name="plugin_update_queue_status"),
        # At most one pending row per workspace and plugin. An upsert against it
        # must repeat the predicate: ON CONFLICT (workspace_id, plugin_name) WHERE status = 'pending'.
        Index(
            "plugin_update_queue_pending_unique",
            "workspace_id",
            "plugin_name",
            unique=True,
            postgresql_where=text(PENDING_PREDICATE),
        ),
    )
