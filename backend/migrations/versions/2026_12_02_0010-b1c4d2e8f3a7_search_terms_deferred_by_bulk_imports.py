"""search terms deferred by bulk imports

Revision ID: b1c4d2e8f3a7
Revises: 974bbb96c50e
Create Date: 2026-12-02 00:10:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b1c4d2e8f3a7"
down_revision: str | Sequence[str] | None = "974bbb96c50e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VOCABULARY = """
    INSERT INTO search_term (term)
    SELECT DISTINCT word
    FROM new_rows, unnest(string_to_array(name_search || ' ' || artist_search, ' ')) AS word
    WHERE word <> ''
    ON CONFLICT DO NOTHING;
"""
# What the trigger does first now: nothing, in a transaction that adds the words itself.
DEFERRED = "IF current_setting('songbook.search_terms', true) = 'deferred' THEN RETURN NULL; END IF;"


def _replace_trigger_function(body: str) -> None:
    op.execute(
        "CREATE OR REPLACE FUNCTION song_search_terms() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN {body} RETURN NULL; END $$"
    )


def upgrade() -> None:
    """PostgreSQL: a transaction that sets songbook.search_terms to 'deferred' adds the words itself.

    A bulk import does, once, from its staging table: the trigger's transition
    table of a million rows cost it more than the words themselves. SQLite's
    vocabulary is the full-text index's own: nothing to change there.
    """
    if op.get_bind().dialect.name == "postgresql":
        _replace_trigger_function(DEFERRED + VOCABULARY)


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        _replace_trigger_function(VOCABULARY)
