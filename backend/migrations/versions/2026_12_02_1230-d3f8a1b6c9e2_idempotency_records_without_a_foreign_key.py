"""idempotency records without a foreign key to their API key

Revision ID: d3f8a1b6c9e2
Revises: c7e2a9d4b1f6
Create Date: 2026-12-02 12:30:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d3f8a1b6c9e2"
down_revision: str | Sequence[str] | None = "c7e2a9d4b1f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEY = "fk_idempotency_key_api_key_id_api_key"


def upgrade() -> None:
    """A keyed write no longer locks its API key's row.

    PostgreSQL checks a foreign key by locking the row it names (FOR KEY SHARE).
    With writes of one key in flight at once, each such lock made a new MultiXact
    of every transaction holding it: one a keyed write, about 21 members each at
    32 in flight (`mxid_age` and `pg_stat_slru`, pgbench), work on every write and
    a store that only vacuum empties (backend/README.md, "Safe writes"). The record
    of a key that is gone is not kept longer than any other: it expires.
    """
    with op.batch_alter_table("idempotency_key", schema=None) as batch_op:
        batch_op.drop_constraint(op.f(FOREIGN_KEY), type_="foreignkey")


def downgrade() -> None:
    op.execute("DELETE FROM idempotency_key WHERE api_key_id NOT IN (SELECT id FROM api_key)")
    with op.batch_alter_table("idempotency_key", schema=None) as batch_op:
        batch_op.create_foreign_key(op.f(FOREIGN_KEY), "api_key", ["api_key_id"], ["id"], ondelete="CASCADE")
