"""Synthetic songs to measure on: varied, realistic-looking and the same for the same seed."""

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice, product
from typing import Any

from app.models import derived_columns

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
    "Urbano", "Vásquez", "Weiß", "Yılmaz",  # noqa: RUF001 (a Turkish name) "Zieliński", "Åberg", "Brontë", "Da Silva", "Le Guin", "McAllister",
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
ENDINGS = ["", " (Remastered)", " (Live)", " Blues", " Again", " Tonight", " Forever", " No. 2"]
# fmt: on


def _artists() -> list[str]:
    people = [f"{first} {last}" for first, last in product(FIRST_NAMES, LAST_NAMES)]
    bands = [f"The {word} {noun}" for word, noun in product(BAND_WORDS, BAND_NOUNS)]
    return FAMOUS_ARTISTS + people + bands


def _song_name(number: int) -> str:
    """A distinct song name for each number: an adjective, a noun, more nouns as numbers grow, an ending."""
    number, ending = divmod(number, len(ENDINGS))
    number, adjective = divmod(number, len(ADJECTIVES))
    number, noun = divmod(number, len(NOUNS))
    words = [ADJECTIVES[adjective], NOUNS[noun]]
    while number:  # bijective numeration: no two numbers give the same words
        number, extra = divmod(number - 1, len(NOUNS))
        words.append(NOUNS[extra])
    return " ".join(words) + ENDINGS[ending]


def generate_songs(count: int, *, seed: int = 1) -> Iterator[dict[str, Any]]:
    """`count` distinct songs with their derived columns: the same songs for the same seed."""
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    artists = _artists()
    # A few artists have many songs, most have few (a Zipf-like spread).
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(artists))]
    songs_by_artist: dict[int, int] = {}
    start = datetime(2020, 1, 1, tzinfo=UTC)
    for i, artist_index in enumerate(islice(_weighted(rng, weights), count)):
        # Each artist's names are distinct, from a place in the list of its own.
        count_so_far = songs_by_artist.get(artist_index, 0)
        songs_by_artist[artist_index] = count_so_far + 1
        name = _song_name((artist_index * 7919 * seed) % 100_000 + count_so_far)
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
