"""song search texts and sort indexes

Revision ID: f0ce4017291c
Revises: ed70ce59ea82
Create Date: 2026-11-25 10:43:34.157452

"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "f0ce4017291c"
down_revision: str | Sequence[str] | None = "ed70ce59ea82"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


song = sa.table(
    "song",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("artist", sa.String),
    sa.column("name_search", sa.String),
    sa.column("artist_search", sa.String),
)


def search_fold(text: str) -> str:
    # A copy of app.models.search_fold as it is today: a migration must not
    # change when the app's code does.
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    kept = "".join(" " if not char.isalnum() else char for char in decomposed if not unicodedata.combining(char))
    return " ".join(kept.split())


# SQLite rebuilds the table for some of these changes: keep its AUTOINCREMENT.
KEEP_AUTOINCREMENT = {"table_kwargs": {"sqlite_autoincrement": True}}


def upgrade() -> None:
    """Upgrade schema."""
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("song", **KEEP_AUTOINCREMENT) as batch_op:
        batch_op.add_column(sa.Column("name_search", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("artist_search", sqlmodel.sql.sqltypes.AutoString(), nullable=True))

    connection = op.get_bind()
    for id_, name, artist in connection.execute(sa.select(song.c.id, song.c.name, song.c.artist)).all():
        connection.execute(
            song.update()
            .where(song.c.id == id_)
            .values(name_search=search_fold(name), artist_search=search_fold(artist))
        )

    with op.batch_alter_table("song", **KEEP_AUTOINCREMENT) as batch_op:
        batch_op.alter_column("name_search", nullable=False)
        batch_op.alter_column("artist_search", nullable=False)
        batch_op.create_index("ix_song_artist_key_id", ["artist_key", "id"], unique=False)
        batch_op.create_index("ix_song_created_at_id", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_song_name_key_id", ["name_key", "id"], unique=False)

    # Sorting by year puts songs without one first (ascending): one index
    # serves the year filters and both directions of that sort.
    op.execute("CREATE INDEX ix_song_year_sort ON song (coalesce(year, 0), id)")

    if dialect == "postgresql":
        # Byte-wise order and comparison for the keys, whatever the database's collation.
        op.execute('ALTER TABLE song ALTER COLUMN name_key TYPE varchar COLLATE "C"')
        op.execute('ALTER TABLE song ALTER COLUMN artist_key TYPE varchar COLLATE "C"')
        # Search: the words of name and artist in a full-text index, and the
        # vocabulary of those words, kept by a trigger, with a trigram index to
        # find the words a misspelt query word may mean.
        op.execute(
            "ALTER TABLE song ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
            "(to_tsvector('simple', name_search || ' ' || artist_search)) STORED"
        )
        op.execute("CREATE INDEX ix_song_search_vector ON song USING gin (search_vector)")
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        # Byte-wise, so that the primary key serves prefix ranges whatever the collation.
        op.execute('CREATE TABLE search_term (term text COLLATE "C" PRIMARY KEY)')
        op.execute("CREATE INDEX ix_search_term_trgm ON search_term USING gin (term gin_trgm_ops)")
        op.execute(
            """
            CREATE FUNCTION song_search_terms() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO search_term (term)
                SELECT DISTINCT word
                FROM new_rows, unnest(string_to_array(name_search || ' ' || artist_search, ' ')) AS word
                WHERE word <> ''
                ON CONFLICT DO NOTHING;
                RETURN NULL;
            END $$
            """
        )
        for event in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER song_search_terms_{event.lower()} AFTER {event} ON song "
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION song_search_terms()"
            )
        op.execute(
            "INSERT INTO search_term (term) SELECT DISTINCT word FROM song, "
            "unnest(string_to_array(name_search || ' ' || artist_search, ' ')) AS word "
            "WHERE word <> '' ON CONFLICT DO NOTHING"
        )
    else:
        # Search: an FTS5 index of the words of name and artist, kept in step
        # with the table by triggers (an external-content table); its
        # vocabulary, through fts5vocab, gives the words a misspelt query word
        # may mean.
        op.execute(
            "CREATE VIRTUAL TABLE song_search USING fts5("
            "name_search, artist_search, content='song', content_rowid='id')"
        )
        op.execute("CREATE VIRTUAL TABLE song_search_terms USING fts5vocab(song_search, row)")
        op.execute(
            "CREATE TRIGGER song_search_insert AFTER INSERT ON song BEGIN "
            "INSERT INTO song_search (rowid, name_search, artist_search) "
            "VALUES (new.id, new.name_search, new.artist_search); END"
        )
        op.execute(
            "CREATE TRIGGER song_search_delete AFTER DELETE ON song BEGIN "
            "INSERT INTO song_search (song_search, rowid, name_search, artist_search) "
            "VALUES ('delete', old.id, old.name_search, old.artist_search); END"
        )
        op.execute(
            "CREATE TRIGGER song_search_update AFTER UPDATE OF name_search, artist_search ON song BEGIN "
            "INSERT INTO song_search (song_search, rowid, name_search, artist_search) "
            "VALUES ('delete', old.id, old.name_search, old.artist_search); "
            "INSERT INTO song_search (rowid, name_search, artist_search) "
            "VALUES (new.id, new.name_search, new.artist_search); END"
        )
        op.execute("INSERT INTO song_search (song_search) VALUES ('rebuild')")


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        for event in ("insert", "update"):
            op.execute(f"DROP TRIGGER song_search_terms_{event} ON song")
        op.execute("DROP FUNCTION song_search_terms()")
        op.execute("DROP TABLE search_term")
        op.execute("ALTER TABLE song DROP COLUMN search_vector")
        op.execute('ALTER TABLE song ALTER COLUMN name_key TYPE varchar COLLATE "default"')
        op.execute('ALTER TABLE song ALTER COLUMN artist_key TYPE varchar COLLATE "default"')
    else:
        for trigger in ("song_search_update", "song_search_delete", "song_search_insert"):
            op.execute(f"DROP TRIGGER {trigger}")
        op.execute("DROP TABLE song_search_terms")
        op.execute("DROP TABLE song_search")
    op.execute("DROP INDEX ix_song_year_sort")
    with op.batch_alter_table("song", **KEEP_AUTOINCREMENT) as batch_op:
        batch_op.drop_index("ix_song_name_key_id")
        batch_op.drop_index("ix_song_created_at_id")
        batch_op.drop_index("ix_song_artist_key_id")
        batch_op.drop_column("artist_search")
        batch_op.drop_column("name_search")
