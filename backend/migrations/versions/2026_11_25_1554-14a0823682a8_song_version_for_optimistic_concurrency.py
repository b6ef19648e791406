"""song version for optimistic concurrency

Revision ID: 14a0823682a8
Revises: f0ce4017291c
Create Date: 2026-11-25 15:54:53.035110

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "14a0823682a8"
down_revision: str | Sequence[str] | None = "f0ce4017291c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE, not batch mode: both databases add and drop a column in
# place, and a batch rebuild of `song` on SQLite would lose its search triggers.


def upgrade() -> None:
    """Every song starts at version 1."""
    op.add_column("song", sa.Column("version", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    op.drop_column("song", "version")
