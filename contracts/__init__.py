"""The public language of the platform: events, commands, topics and codes.

Departments and BI depend on this package only. Every message has a `schema_version`, the
topic it travels on (`TOPIC`) and its key (`key()`, the feedback id, so one case's messages
stay ordered in one partition).
"""
