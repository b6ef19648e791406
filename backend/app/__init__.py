"""Songbook: a song catalog service."""
