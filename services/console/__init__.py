"""The service console: the web pages agents, supervisors and managers work in (served at
`/`), server-rendered with Jinja2 and htmx over the platform's own API (api.py)."""
