"""Who may do what: staff sign-in (local users or an OIDC provider), roles, and the one
permission table every endpoint is checked against."""
