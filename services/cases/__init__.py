"""The Case: one feedback's whole life as an event stream, its store and its outbox relay.

Routing, deadlines (sla) and handling all append to the same Case, so it lives here rather
than inside any one of them.
"""
