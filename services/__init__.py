"""The platform's services, one folder per capability: intake, routing, sla, projections."""
