"""Handling a case after routing: the use cases that take it from accepted to archived."""
