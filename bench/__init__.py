"""Benchmarks: `python -m bench [name ...]` prints figures; nothing here asserts."""
