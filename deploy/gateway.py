"""The Compose gateway's routes (deploy/gateway/feedback-routes.conf), written from the
Kubernetes Ingress (deploy/kubernetes/ingress.yaml): one route table for both, so the two
cannot drift. After changing the Ingress's paths, run `python -m deploy.gateway`;
tests/unit/test_deploy_manifests.py fails while the written file differs from what this
writes, and replays nginx's matching on the written file for every route the services declare.

The locations are the Ingress's paths as ingress-nginx renders them with use-regex
(`location ~* "^<path>"`, ordered by descending length of the path text, a stable sort):
nginx tries regex locations in the order they appear and the first match wins, so the
gateway picks the same service the Ingress does. Beyond the Ingress, each service's own
/health and /metrics are reachable as /health/<service> and /metrics/<service> (in
Kubernetes, Prometheus scrapes the pods directly)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
INGRESS = DEPLOY / "kubernetes" / "ingress.yaml"
DEPLOYMENTS = DEPLOY / "kubernetes" / "deployments.yaml"
ROUTES = DEPLOY / "gateway" / "feedback-routes.conf"
# Every service's HTTP port inside its container (compose.yaml's `run ... --port`).
SERVICE_PORT = 8000
# Kubernetes objects are named feedback-<service>; Compose services just <service>.
PREFIX = "feedback-"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def ingress_paths() -> list[tuple[str, str]]:
    """(path regex, Compose service) in the Ingress's order."""
    [ingress] = [d for d in _documents(INGRESS) if d["kind"] == "Ingress"]
    return [
        (p["path"], p["backend"]["service"]["name"].removeprefix(PREFIX))
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]


def deployed_services() -> list[str]:
    return [
        d["metadata"]["name"].removeprefix(PREFIX)
        for d in _documents(DEPLOYMENTS)
        if d["kind"] == "Deployment"
    ]


def _proxy(upstream: str) -> str:
    # A variable makes nginx resolve the name per request (Docker's DNS, `resolver` in
    # nginx.conf): the gateway starts before the services and follows restarts and --scale.
    return f"set $upstream {upstream}; proxy_pass $upstream;"


def routes_config() -> str:
    lines = [
        "# Written by `python -m deploy.gateway` from deploy/kubernetes/ingress.yaml: do not edit.",
        "# Included in both servers of nginx.conf.",
    ]
    for path, service in sorted(ingress_paths(), key=lambda entry: -len(entry[0])):
        if '"' in path or "{" in path:
            raise ValueError(f"{path}: cannot be written as a quoted nginx location")
        upstream = f"http://{service}:{SERVICE_PORT}"
        lines.append(f'location ~* "^{path}" {{ {_proxy(upstream)} }}')
    for service in deployed_services():
        for endpoint in ("health", "metrics"):
            # A URI in the variable replaces the request's: /metrics/routing -> /metrics.
            upstream = f"http://{service}:{SERVICE_PORT}/{endpoint}"
            lines.append(f"location = /{endpoint}/{service} {{ {_proxy(upstream)} }}")
    return "\n".join(lines) + "\n"


def main() -> None:
    written = routes_config()
    if ROUTES.exists() and ROUTES.read_text(encoding="utf-8") == written:
        print(f"{ROUTES.relative_to(DEPLOY.parent)} is up to date")
        return
    ROUTES.write_text(written, encoding="utf-8")
    print(f"wrote {ROUTES.relative_to(DEPLOY.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
