"""Deadlines and escalation: business calendars, clocks on cases, the scheduler that warns and breaches."""
