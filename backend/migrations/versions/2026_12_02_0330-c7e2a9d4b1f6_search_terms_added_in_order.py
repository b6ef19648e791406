"""search terms added in order

Revision ID: c7e2a9d4b1f6
Revises: b1c4d2e8f3a7
Create Date: 2026-12-02 03:30:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c7e2a9d4b1f6"
down_revision: str | Sequence[str] | None = "b1c4d2e8f3a7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFERRED = "IF current_setting('songbook.search_terms', true) = 'deferred' THEN RETURN NULL; END IF;"


UNORDERED = """
    INSERT INTO search_term (term)
    SELECT DISTINCT word
    FROM new_rows, unnest(string_to_array(name_search || ' ' || artist_search, ' ')) AS word
    WHERE word <> ''
    ON CONFLICT DO NOTHING;
"""
IN_ORDER = UNORDERED.replace("ON CONFLICT", "ORDER BY word\n    ON CONFLICT")


def _replace_trigger_function(body: str) -> None:
    op.execute(
        "CREATE OR REPLACE FUNCTION song_search_terms() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN {body} RETURN NULL; END $$"
    )


def upgrade() -> None:
    """PostgreSQL: the trigger adds a statement's new words in order, as a bulk import does.

    Two writers adding words new to the catalog each wait for the other's
    uncommitted words; in any order of their own, they could wait for each other
    in a circle (a deadlock, one of them undone). In one order, the one that
    comes second only waits for the first.
    """
    if op.get_bind().dialect.name == "postgresql":
        _replace_trigger_function(DEFERRED + IN_ORDER)


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        _replace_trigger_function(DEFERRED + UNORDERED)
