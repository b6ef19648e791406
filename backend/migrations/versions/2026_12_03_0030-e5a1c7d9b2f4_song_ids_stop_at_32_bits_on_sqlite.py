"""song ids stop at 32 bits on SQLite, as PostgreSQL's sequence does

Revision ID: e5a1c7d9b2f4
Revises: bf86f14c3cc4
Create Date: 2026-12-03 00:30:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e5a1c7d9b2f4"
down_revision: str | Sequence[str] | None = "bf86f14c3cc4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The message app.errors.ids_used_up looks for. PostgreSQL's `song.id` is an integer
# whose sequence stops at 2**31 - 1; SQLite's AUTOINCREMENT would go on to 2**63 - 1,
# ids the API can neither take nor give (app.fields.ID_MAX). A trigger, not a CHECK:
# adding a CHECK rebuilds the table on SQLite, and its search triggers with it.
IDS_USED_UP = "song ids used up"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER song_id_in_range AFTER INSERT ON song WHEN new.id > 2147483647 "
            f"BEGIN SELECT RAISE(ABORT, '{IDS_USED_UP}'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER song_id_in_range")
