"""How names and artists are compared and searched: the keys of sameness and the folded search texts."""

import unicodedata
from typing import Any


def song_key(text: str) -> str:
    """How names and artists compare for sameness: trimmed, NFC-normalised and case-folded."""
    return unicodedata.normalize("NFC", text.strip()).casefold()


# ASCII text's fold, a byte at a time: capitals to small letters, a space for all but letters and digits.
_ASCII_FOLD = bytes(c + 32 if 65 <= c <= 90 else c if 97 <= c <= 122 or 48 <= c <= 57 else 32 for c in range(256))


class _FoldTable(dict[int, str | None]):
    """For str.translate: drops combining marks, makes other non-alphanumerics spaces; learns as it goes."""

    def __missing__(self, code: int) -> str | None:
        char = chr(code)
        folded = None if unicodedata.combining(char) else char if char.isalnum() else " "
        if len(self) < 100_000:  # bounded: hostile text cannot grow it without end
            self[code] = folded
        return folded


# Letters that are no letter plus a mark, so that decomposing leaves them as they
# are: read as the letters people type for them ("Røyksopp" is found as "royksopp").
# After case-folding, which makes the capitals these (\\u0131 is the dotless i).
LETTERS = {"ø": "o", "ł": "l", "đ": "d", "ð": "d", "ħ": "h", "ŧ": "t", "\u0131": "i", "æ": "ae", "œ": "oe", "þ": "th"}
_FOLD = _FoldTable({ord(letter): ascii for letter, ascii in LETTERS.items()})


def search_fold(text: str) -> str:
    """How search sees text: case-folded, accents dropped, punctuation as spaces ("Beyoncé" -> "beyonce")."""
    if text.isascii():
        # What _unicode_fold gives, in half its time or a regular expression's (0.5 µs a name against
        # 1.15): bulk imports fold millions of names.
        return " ".join(text.encode().translate(_ASCII_FOLD).decode().split())
    return _unicode_fold(text)


def _unicode_fold(text: str) -> str:
    # Compatibility forms first (mathematical bold H is H), then case, then decomposed again for the accents.
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return " ".join(decomposed.translate(_FOLD).split())


def derived_columns(values: dict[str, Any]) -> dict[str, str]:
    """The comparison keys and search texts of the name and artist that `values` sets."""
    derived = {}
    for field in ("name", "artist"):
        if field in values:
            derived[f"{field}_key"] = song_key(values[field])
            derived[f"{field}_search"] = search_fold(values[field])
    return derived
