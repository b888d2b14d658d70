"""Projections: read models built from case events (registration table first)."""
