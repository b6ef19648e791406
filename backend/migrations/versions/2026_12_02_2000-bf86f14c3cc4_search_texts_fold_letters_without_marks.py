"""search texts fold letters that decompose into no letter and mark

Revision ID: bf86f14c3cc4
Revises: d3f8a1b6c9e2
Create Date: 2026-12-02 20:00:00.000000

"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "bf86f14c3cc4"
down_revision: str | Sequence[str] | None = "d3f8a1b6c9e2"
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

# A copy of app.folding.LETTERS as it is today: a migration must not change when the app's code does.
LETTERS = {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "ħ": "h", "ŧ": "t", "\u0131": "i", "æ": "ae", "œ": "oe", "þ": "th"}


def search_fold(text: str, letters: dict[str, str]) -> str:
    """app.folding.search_fold as it is today (`LETTERS`), or as it was before (no letters)."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    kept = "".join(
        letters.get(char, char if char.isalnum() else " ") for char in decomposed if not unicodedata.combining(char)
    )
    return " ".join(kept.split())


# Every character that folds to one of LETTERS: the letters, their capitals, those with a mark
# on them ("Ǿ"), and their compatibility forms ("ℏ"); as Python 3.11's Unicode tables gave them.
_HOLDING_LETTERS = "ÆÐØÞæðøþĐđĦħıŁłŒœŦŧǢǣǼǽǾǿᴭᶞℏꟸꟹ\U00010783\U00010795\U000107a2\U0001d6a4"


def _refold(letters: dict[str, str]) -> None:
    """The search texts of the songs whose name or artist has one of `LETTERS`, folded again.

    Few songs have one: they are found by the database, and only they are read.
    The search indexes follow (SQLite's by its update trigger, PostgreSQL's
    generated column), and so does PostgreSQL's vocabulary (its statement trigger).
    """
    connection = op.get_bind()
    having = sa.or_(*(column.contains(char) for column in (song.c.name, song.c.artist) for char in _HOLDING_LETTERS))
    rows = connection.execute(sa.select(song.c.id, song.c.name, song.c.artist).where(having)).all()
    for id_, name, artist in rows:
        connection.execute(
            song.update()
            .where(song.c.id == id_)
            .values(name_search=search_fold(name, letters), artist_search=search_fold(artist, letters))
        )


def upgrade() -> None:
    _refold(LETTERS)


def downgrade() -> None:
    _refold({})
