"""Synthetic songs to measure on: varied, realistic-looking and the same for the same seed."""

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import accumulate, islice, product
from typing import Any

from app.folding import derived_columns, song_key

# fmt: off
FAMOUS_ARTISTS = [
    "The Beatles", "Beyoncé", "Queen", "Sigur Rós", "AC/DC", "Guns N' Roses", "Motörhead", "Björk", "Mötley Crüe",
    "Céline Dion", "Michael Jackson", "Aretha Franklin", "Daft Punk", "Röyksopp", "Blue Öyster Cult",
    "Beyoncé & Jay-Z", "Earth, Wind & Fire", "Simon & Garfunkel", "Édith Piaf", "Ludovico Einaudi", "Nina Simone",
    "Radiohead", "Joni Mitchell", "Los Lobos", "Caetano Veloso",
]
FIRST_NAMES = [
    "Ana", "Björn", "Chloé", "Diego", "Émile", "Fatima", "Giulia", "Håkon", "Ingrid", "José", "Kai", "Léa",
    "Mateo", "Noémie", "Oskar", "Paulo", "Renée", "Søren", "Tomás", "Umaima", "Valérie", "Wanda", "Xavier",
    "Yusuf", "Zoë", "Amélie", "Bruno", "Carmen", "Dmitri", "Elif", "François", "Grete", "Hugo", "Iñaki",
]
LAST_NAMES = [
    "Álvarez", "Berg", "Castillo", "Dubois", "Eriksson", "Fernández", "García", "Hansen", "Ibáñez", "Jensen",
    "Kowalski", "López", "Müller", "Nakamura", "O'Brien", "Petrović", "Quintero", "Rossi", "Schröder", "Tanaka",
    "Urbano", "Vásquez", "Weiß", "Yılmaz", "Zieliński", "Åberg", "Brontë", "Da Silva", "Le Guin",  # noqa: RUF001 (a Turkish name)
    "McAllister",
]
BAND_WORDS = [
    "Velvet", "Electric", "Midnight", "Crimson", "Silver", "Neon", "Wild", "Golden", "Broken", "Lunar", "Hollow",
    "Northern", "Paper", "Glass", "Iron", "Atomic", "Secret", "Stone", "Echo", "Violet", "Arctic", "Polar",
]
BAND_NOUNS = [
    "Wolves", "Rivers", "Machines", "Kings", "Saints", "Ghosts", "Tigers", "Lights", "Hearts", "Dreamers",
    "Pilots", "Sisters", "Brothers", "Strangers", "Horses", "Satellites", "Gardens", "Shadows", "Owls",
]
ADJECTIVES = [
    "Blue", "Lonely", "Sweet", "Broken", "Golden", "Endless", "Little", "Wild", "Secret", "Silent", "Burning",
    "Electric", "Summer", "Midnight", "Crazy", "Beautiful", "Dancing", "Falling", "Hungry", "Dirty", "Easy",
    "Lost", "Fading", "Lucky", "Restless", "Velvet", "Paper", "Neon", "Holy", "Bitter", "Gentle", "Heavy",
]
NOUNS = [
    "Heart", "Love", "Night", "Road", "River", "Moon", "Rain", "Fire", "Dream", "Girl", "Boy", "Song", "Sky",
    "City", "Train", "Window", "Ocean", "Highway", "Kiss", "Soul", "Angel", "Shadow", "Garden", "Mirror",
    "Stranger", "Morning", "Winter", "Summer", "Heaven", "Thunder", "Diamond", "Memory", "Letter", "Island",
]
COMMON_WORDS = [
    "the", "you", "me", "my", "of", "in", "to", "on", "we", "all", "time", "baby", "day", "life", "world", "way",
    "home", "light", "dance", "stay", "run", "cry", "never", "rock", "roll", "gold", "sun", "star", "wind", "sea",
    "fall", "rise", "born", "free", "young", "old", "man", "woman", "friend", "lady", "king", "queen", "party",
    "money", "water", "stone", "street", "town", "yesterday", "tomorrow", "goodbye", "hello", "lonely", "together",
]
ENDINGS = [" (Remastered)", " (Live)", " (Acoustic)", " - Radio Edit", " No. 2", " Part II"]
SYLLABLES = [
    "ka", "lo", "mi", "ra", "te", "su", "na", "vi", "do", "ré", "ba", "ko", "li", "ma", "sé", "to", "ru", "ne",
    "ha", "zu", "pe", "ta", "gi", "no", "bel", "dor", "lin", "mar", "san", "tor", "vel", "ös", "ån", "qui",
]
# fmt: on
VOCABULARY_SIZE = 30_000


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    """Made-up words of two to four syllables, some accented: the long tail of a catalog's vocabulary."""
    words: dict[str, None] = {}
    while len(words) < count:
        words["".join(rng.choices(SYLLABLES, k=rng.choice((2, 2, 3, 3, 4))))] = None
    return list(words)


def _artists(pseudo: list[str]) -> list[str]:
    people = [f"{first} {last}" for first, last in product(FIRST_NAMES, LAST_NAMES)]
    bands = [f"The {word} {noun}" for word, noun in product(BAND_WORDS, BAND_NOUNS)]
    invented = [f"{first.title()} {last.title()}" for first, last in zip(pseudo[::2], pseudo[1::2], strict=False)]
    return FAMOUS_ARTISTS + people + bands + invented[:20_000]


def generate_songs(count: int, *, seed: int = 1) -> Iterator[dict[str, Any]]:
    """`count` distinct songs with their derived columns: the same songs for the same seed.

    Words and artists are drawn with Zipf-like weights, as in real catalogs: a
    few words ("love", "heart") are in many names, most in few; a few artists
    have thousands of songs, most a handful.
    """
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    pseudo = _pseudo_words(rng, VOCABULARY_SIZE)
    vocabulary = [*COMMON_WORDS, *(word.lower() for word in ADJECTIVES + NOUNS), *pseudo]
    word_weights = list(accumulate(1 / (rank + 1) ** 1.05 for rank in range(len(vocabulary))))
    artists = _artists(pseudo[::-1])
    artist_weights = [1 / (rank + 1) ** 0.7 for rank in range(len(artists))]
    names_by_artist: dict[int, set[str]] = {}
    start = datetime(2020, 1, 1, tzinfo=UTC)
    for i, artist_index in enumerate(islice(_weighted(rng, artist_weights), count)):
        taken = names_by_artist.setdefault(artist_index, set())
        while True:  # each artist's names are distinct
            words = rng.choices(vocabulary, cum_weights=word_weights, k=rng.choice((1, 2, 2, 2, 3, 3, 3, 4, 4, 5)))
            name = " ".join(words).capitalize() + (rng.choice(ENDINGS) if rng.random() < 0.08 else "")
            if song_key(name) not in taken:
                taken.add(song_key(name))
                break
        artist = artists[artist_index]
        year = None if rng.random() < 0.05 else rng.randint(1950, 2025)
        stamp = start + timedelta(seconds=i * 17)
        yield {"name": name, "artist": artist, "year": year, "created_at": stamp, "updated_at": stamp} | (
            derived_columns({"name": name, "artist": artist})
        )


def _weighted(rng: random.Random, weights: list[float]) -> Iterator[int]:
    population = range(len(weights))
    while True:
        yield from rng.choices(population, weights, k=10_000)
