"""Routing: turns received feedback into cases; classification and assignment grow here."""
