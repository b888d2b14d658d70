"""Intake: channel adapters, feedback numbering, de-duplication, the PII vault, publishing."""
