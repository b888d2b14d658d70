"""Topic names. A deployment may prefix them (settings `topic_prefix`) to share a cluster."""

FEEDBACK_RECEIVED = "feedback.received"
"""Normalised feedback from every intake channel, before it becomes a case."""

CORRESPONDENCE = "feedback.correspondence"
"""What a customer sends about an existing feedback: replies, supplied information."""

FEEDBACK_EVENTS = "feedback.events"
"""Every stored case event, in order per case, relayed from the event store."""

DEADLETTER = "feedback.deadletter"
"""What could not be processed, with the raw payload and the reason."""

REPORTS = "feedback.reports"
"""The weekly and monthly reports, announced once each is written (no personal data)."""

DEPARTMENT_PREFIX = "dept."


def department_topic(department: str) -> str:
    """Each department subscribes to its own topic and sees only its own work."""
    return f"{DEPARTMENT_PREFIX}{department}"
