"""The store's schema (SQLAlchemy Core): one table of jobs, one of saved predictions for resuming."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("message", Text, nullable=False, default=""),
    Column("created", String(40), nullable=False),
    Column("updated", String(40), nullable=False),
    Column("source", Text, nullable=False),
    Column("num_images", Integer, nullable=False),
    Column("params", Text, nullable=False),
    Column("error", Text),
    # the API-key fingerprint of the creator ('' when the gateway has no key); never the key
    Column("owner", String(64), nullable=False, default="", server_default=""),
    # epoch seconds, for ordering and retention (``created`` is the ISO text the API shows)
    Column("created_at", Float, nullable=False, default=0.0, server_default="0"),
    Column("finished_at", Float),
    # the lease: who runs the job, until when, and a token fencing every write of that claim
    Column("worker", String(200)),
    Column("lease_token", String(32)),
    Column("lease_until", Float),
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
)

#: predictions per (job, model key, condition, batch), written as each batch is classified, so a job a
#: dead worker left is resumed by another without classifying those batches again; deleted when it is done
predictions = Table(
    "job_predictions",
    metadata,
    Column("job_id", String(32), nullable=False),
    Column("model_key", String(200), nullable=False),
    Column("corruption", String(64), nullable=False),
    Column("severity", Integer, nullable=False),
    Column("batch", String(100), nullable=False),
    Column("predicted", LargeBinary, nullable=False),  # int32 little-endian
    Column("confidence", LargeBinary, nullable=False),  # float32 little-endian
    PrimaryKeyConstraint("job_id", "model_key", "corruption", "severity", "batch"),
)
