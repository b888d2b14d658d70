"""deploy/compose.yaml and deploy/kubernetes/ are valid against their schemas (the Compose
Specification vendored by check-jsonschema; Kubernetes' OpenAPI schemas vendored by
kubernetes-validate; both offline) and name every setting the services read: each Settings
field's variable (FEEDBACK_<NAME>, or its alias) is set in the ConfigMap or Secret and in
the compose environment, or is listed below as optional with a default, with the reason."""

from __future__ import annotations

import base64
import functools
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import crossplane
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices, ValidationError

from deploy import gateway
from services.common.settings import Settings
from services.runtime import ALL_SERVICES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.33"  # the oldest minor still supported when this was written

# Settings a deployment may leave at their defaults, and why.
OPTIONAL: dict[str, str] = {
    "customer_tiers": "the standard tiers",
    "max_description_chars": "default limit",
    "max_future_skew_s": "default limit",
    "max_request_bytes": "default limit",
    "header_timeout_s": "default limit",
    "body_timeout_s": "default limit",
    "max_connections": "default limit",
    "number_block_size": "1: no gaps in feedback numbers",
    "publish_timeout_s": "default",
    "consumer_batch_size": "tuned default",
    "relay_batch_size": "tuned default",
    "relay_idle_poll_s": "fallback poll only",
    "consumer_fetch_wait_ms": "tuned default",
    "relay_gather_ms": "tuned default",
    "evidence_s3_endpoint_url": "AWS itself; set for another S3-compatible store",
    "evidence_s3_region": "the SDK's default region",
    "max_attachment_bytes": "default limit",
    "max_attachments": "default limit",
    "max_batch_file_bytes": "default limit",
    "allowed_attachment_types": "default list",
    "wechat_token": "channel off until configured (a secret)",
    "weibo_secret": "channel off until configured (a secret)",
    "douyin_secret": "channel off until configured (a secret)",
    "web_chat_secret": "channel off until configured (a secret)",
    "wechat_encoding_aes_key": "safe mode off until configured (a secret)",
    "wechat_app_id": "with the AES key only",
    "wechat_allow_plaintext": "off: plaintext pushes refused",
    "smtp_max_message_bytes": "default limit",
    "auth_token_ttl_s": "8 h",
    "archive_after_days": "30 days",
    "pii_reveal_roles": "supervisor and head",
    "oidc_issuer": "local passwords unless an OIDC provider is configured",
    "oidc_audience": "with the OIDC issuer only",
    "oidc_jwks_url": "with the OIDC issuer only",
    "oidc_public_key": "with the OIDC issuer only",
    "oidc_role_claim": "default claim name",
    "oidc_departments_claim": "default claim name",
    "oidc_agent_claim": "default claim name",
    "oidc_username_claim": "default claim name",
    "notify_smtp_host": "no e-mail until configured",
    "notify_smtp_port": "0: no e-mail until configured",
    "notify_smtp_starttls": "with the SMTP server only",
    "notify_smtp_username": "with the SMTP server only",
    "notify_smtp_password": "with the SMTP server only (a secret)",
    "notify_from": "default sender",
    "notify_sms_webhook_url": "no SMS until configured",
    "notify_im_webhook_url": "no IM until configured",
    "notify_webhook_secret": "with a webhook only (a secret; empty would count as set)",
    "notify_staff_file": "config/notifications.yaml in the image",
    "notify_batch_size": "tuned default",
    "notify_concurrency": "tuned default",
    "notify_max_attempts": "tuned default",
    "notify_backoff_s": "tuned default",
    "notify_backoff_max_s": "tuned default",
    "notify_send_timeout_s": "tuned default",
    "notify_lease_s": "tuned default",
    "notify_poll_s": "tuned default",
    "notify_ack_hold_s": "tuned default",
    "notify_max_event_age_s": "tuned default",
    "bi_reader_password": "BI sign-in off until set (a secret; empty would count as set)",
    "bi_statement_timeout_s": "30 s",
    "reports_poll_s": "5 min",
    "rate_limit_per_minute": "default limit",
}
# Compose runs on one host: evidence on a shared volume, the gateway on plain HTTP.
COMPOSE_OPTIONAL = {
    "evidence_s3_bucket",
    "evidence_s3_prefix",
    "console_secure_cookie",
}

# Variables the services read outside Settings (files in config/ by default).
OTHER_VARIABLES = {
    "FEEDBACK_AGENTS": "config/agents.yaml in the image",
    "FEEDBACK_CLASSIFIER_RULES": "config/classification.yaml in the image",
    "FEEDBACK_CALENDAR": "config/calendar.yaml in the image",
    "FEEDBACK_CACHE_DIR": "the trained classifier's cache, ~/.cache by default",
    "FEEDBACK_SERVICES": "set by `feedback run --workers` itself",
    "FEEDBACK_HEADER_TIMEOUT_S": "set from Settings by the HTTP server itself",
}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kubernetes() -> list[dict[str, Any]]:
    return [d for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in _documents(f)]


def _compose() -> dict[str, Any]:
    [compose] = _documents(DEPLOY / "compose.yaml")
    return compose


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _kubernetes() if d["kind"] == kind]


def _variables(field: str) -> set[str]:
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return {str(choice) for choice in alias.choices}
    return {f"FEEDBACK_{field.upper()}"}


def _setting_of(variable: str) -> str | None:
    return next((f for f in Settings.model_fields if variable in _variables(f)), None)


def test_kubernetes_manifests_are_valid() -> None:
    documents = _kubernetes()
    assert {d["kind"] for d in documents} >= {
        "ConfigMap", "Secret", "Deployment", "Service", "Ingress", "Job",
    }  # fmt: skip
    for document in documents:
        # strict: a field the schema does not know is an error, not ignored.
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_broken_manifest() -> None:
    [deployment, *_] = _of_kind("Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _compose_schema() -> dict[str, Any]:
    schema = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    loaded: dict[str, Any] = json.loads(schema.read_text())
    return loaded


def test_compose_file_is_valid() -> None:
    validator = jsonschema.Draft202012Validator(_compose_schema())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []
    broken = _compose()
    broken["services"]["intake"]["helthcheck"] = broken["services"]["intake"].pop("healthcheck")
    assert list(validator.iter_errors(broken)), "the schema is live"


def test_optional_list_names_real_settings_with_defaults() -> None:
    for field in OPTIONAL.keys() | COMPOSE_OPTIONAL:
        assert field in Settings.model_fields, f"{field} is no longer a setting"
        assert not Settings.model_fields[field].is_required(), f"{field} has no default"


def _kubernetes_variables() -> set[str]:
    [config] = _of_kind("ConfigMap")
    [secret] = _of_kind("Secret")
    return set(config["data"]) | set(secret["stringData"])


def _compose_variables() -> set[str]:
    return set(_compose()["x-feedback-environment"])


@pytest.mark.parametrize("target", ["kubernetes", "compose"])
def test_every_setting_is_named(target: str) -> None:
    named = _kubernetes_variables() if target == "kubernetes" else _compose_variables()
    optional = set(OPTIONAL) | (COMPOSE_OPTIONAL if target == "compose" else set())
    missing = [
        f for f in Settings.model_fields if f not in optional and not (_variables(f) & named)
    ]
    assert missing == [], f"settings {target} does not set and not listed as optional"
    # And nothing named is a typo: every FEEDBACK_ variable is a setting.
    unknown = [
        v
        for v in named
        if v.startswith("FEEDBACK_") and _setting_of(v) is None and v not in OTHER_VARIABLES
    ]
    assert unknown == []


def test_variables_read_outside_settings_are_known() -> None:
    """Variables read straight from the environment in the services are accounted for."""
    root = DEPLOY.parent
    read = set()
    for folder in ("services", "deploy", "contracts"):
        for path in (root / folder).rglob("*.py"):
            read |= set(
                re.findall(r"""(?:environ\.get|getenv)\(\s*["'](FEEDBACK_\w+)""", path.read_text())
            )
    unaccounted = {v for v in read if _setting_of(v) is None and v not in OTHER_VARIABLES}
    assert unaccounted == set()


def test_secrets_are_placeholders_that_fail_loudly() -> None:
    [secret] = _of_kind("Secret")
    values = secret["stringData"]
    assert {"DATABASE_URL", "FEEDBACK_PII_KEY", "FEEDBACK_AUTH_TOKEN_KEY"} <= set(values)
    assert all("REPLACE_ME" in v for v in values.values()), "a real secret is committed"
    [config] = _of_kind("ConfigMap")
    secret_fields = {
        f for f, info in Settings.model_fields.items() if "Secret" in str(info.annotation)
    }
    assert not {v for v in config["data"] if _setting_of(v) in secret_fields}, (
        "secret in a ConfigMap"
    )
    # The services refuse to start on the placeholders, naming the variable.
    with pytest.raises(ValidationError, match="FEEDBACK_PII_KEY must be base64"):
        Settings(
            database_url=values["DATABASE_URL"],
            kafka_bootstrap_servers="kafka:9092",
            pii_key=values["FEEDBACK_PII_KEY"],
            auth_token_key=values["FEEDBACK_AUTH_TOKEN_KEY"],
        )
    # Compose has no value at all: it refuses to start while the variable is unset.
    environment = _compose_variables()
    compose = _compose()["x-feedback-environment"]
    for variable in ("FEEDBACK_PII_KEY", "FEEDBACK_AUTH_TOKEN_KEY"):
        assert variable in environment
        assert re.fullmatch(r"\$\{" + variable + r":\?[^}]+\}", compose[variable])
    assert ":?" in compose["DATABASE_URL"]


def test_one_deployment_per_service_with_health_probes() -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    assert set(deployments) == {f"feedback-{s}" for s in ALL_SERVICES}
    partitions = int(_of_kind("ConfigMap")[0]["data"]["FEEDBACK_TOPIC_PARTITIONS"])
    for service in ALL_SERVICES:
        spec = deployments[f"feedback-{service}"]["spec"]
        # More members than partitions would sit idle in the consumer group.
        assert 1 <= spec["replicas"] <= partitions
        [container] = spec["template"]["spec"]["containers"]
        assert container["args"][:2] == ["run", service]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
        sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container["envFrom"]}
        assert sources == {"configMapRef": "feedback-config", "secretRef": "feedback-secrets"}
    [job] = _of_kind("Job")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["topics", "apply"]


def _ingress_paths() -> list[tuple[str, str]]:
    """(path, service) in the Ingress's order."""
    [ingress] = _of_kind("Ingress")
    return [
        (p["path"], p["backend"]["service"]["name"])
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]


def _ingress_target(path: str) -> str:
    """The service ingress-nginx sends `path` to, as it matches with use-regex: each path is
    `location ~* "^<path>"`, the locations ordered by descending length of the path text
    (a stable sort), and the first match wins."""
    ordered = sorted(_ingress_paths(), key=lambda entry: -len(entry[0]))
    for pattern, service in ordered:
        if re.match(pattern, path, re.IGNORECASE):
            return service
    raise AssertionError(f"no ingress path matches {path}")


def test_ingress_sends_each_path_to_a_service_that_exists() -> None:
    services = {s["metadata"]["name"] for s in _of_kind("Service")}
    [ingress] = _of_kind("Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"
    paths = _ingress_paths()
    assert {service for _, service in paths} <= services
    assert len({path for path, _ in paths}) == len(paths), "a path listed twice"
    for path, _ in paths:
        re.compile(path)  # RE2 is stricter than Python: keep them plain
        assert "(?" not in path and "\\" not in path, f"{path}: no look-arounds or escapes"
    assert _ingress_target("/") == "feedback-projections"  # the console


# A value for each path parameter the routers declare, as a client would send it.
SAMPLE_PARAMETERS = {
    "number": "F20240520-0001",
    "file_format": "xlsx",
    "kind": "sla_policies",
    "channel": "store",
    "lang": "en",
}


def _served_routes(service: str, settings: Settings) -> set[tuple[str, str]]:
    """(method, path template) of every route the service's HTTP app declares, mounts as
    their prefix with "/*"."""
    from unittest import mock

    from fastapi.routing import iter_route_contexts

    from services import runtime

    # The case store connects at construction (under the schema lock); its routes only
    # need it at request time.
    with (
        mock.patch.object(runtime, "CaseStore", mock.MagicMock),
        mock.patch.object(runtime, "schema_lock", mock.MagicMock()),
    ):
        app = runtime.create_app(settings, (service,))
    routes: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        assert route.path, f"{service}: a route without a path ({route!r})"
        methods = route.methods or {"GET"}  # a mount serves files
        suffix = "/*" if not route.methods else ""
        routes |= {(m, route.path + suffix) for m in methods if m != "HEAD"}
    return routes


def _concrete(template: str) -> str:
    def value(match: re.Match[str]) -> str:
        return SAMPLE_PARAMETERS.get(match.group(1), f"sample-{match.group(1)}")

    return re.sub(r"\{(\w+)(?::\w+)?\}", value, template).replace("/*", "/file.js")


@functools.cache
def _served_by_service() -> dict[str, frozenset[tuple[str, str]]]:
    """(method, path template) each service's app declares, by service (`intake`, ...)."""
    [config] = _of_kind("ConfigMap")
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/none",
        kafka_bootstrap_servers="127.0.0.1:1",
        pii_key=base64.b64encode(b"k" * 32).decode(),
        auth_token_key=base64.b64encode(b"t" * 32).decode(),
        # As deployed: every pod serves the console, which calls the API through the ingress.
        console_api_url=config["data"]["FEEDBACK_CONSOLE_API_URL"],
    )
    served = {s: frozenset(_served_routes(s, settings)) for s in ALL_SERVICES}
    # Guard against an empty enumeration passing vacuously.
    assert ("GET", "/v1/feedback/{number}") in served["projections"]
    assert ("POST", "/v1/feedback/{number}/supplements") in served["intake"]
    assert ("POST", "/v1/cases/{number}/accept") in served["routing"]
    assert sum(len(routes) for routes in served.values()) > 200
    return served


def test_ingress_sends_every_route_to_a_service_that_serves_it() -> None:
    """Every route any service declares, as a request: the Ingress's matching (replayed
    above) picks a Service, and that service's app declares the same method and path."""
    served = {f"feedback-{s}": routes for s, routes in _served_by_service().items()}
    misrouted = []
    for service, routes in served.items():
        for method, template in sorted(routes):
            target = _ingress_target(_concrete(template))
            if (method, template) not in served.get(target, set()):
                misrouted.append(f"{method} {template} ({service}) -> {target}")
    assert misrouted == []


def test_compose_runs_three_brokers_postgres_topics_and_every_service() -> None:
    compose = _compose()["services"]
    brokers = [s for s in compose.values() if str(s.get("image", "")).startswith("apache/kafka")]
    assert len(brokers) == 3
    assert {b["environment"]["KAFKA_NODE_ID"] for b in brokers} == {"1", "2", "3"}
    assert all(b["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller" for b in brokers)
    assert compose["postgres"]["image"].startswith("postgres:")
    assert compose["topics"]["command"] == ["topics", "apply"]
    for service in ALL_SERVICES:
        entry = compose[service]
        assert entry["command"][:2] == ["run", service]
        assert "/health" in " ".join(entry["healthcheck"]["test"])
        assert entry["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert entry["depends_on"]["postgres"]["condition"] == "service_healthy"


# The Compose gateway (deploy/gateway/): nginx, routes written from the Ingress.
GATEWAY = DEPLOY / "gateway"


def test_gateway_routes_are_written_from_the_ingress() -> None:
    """One route table: the committed routes are what `python -m deploy.gateway` writes from
    the Ingress now (change the Ingress, run it, commit both)."""
    assert (GATEWAY / "feedback-routes.conf").read_text() == gateway.routes_config(), (
        "deploy/gateway/feedback-routes.conf is stale: run `python -m deploy.gateway`"
    )
    assert {service for _, service in gateway.ingress_paths()} <= set(ALL_SERVICES)
    assert sorted(gateway.deployed_services()) == sorted(ALL_SERVICES)


def _nginx(path: Path) -> list[dict[str, Any]]:
    """The parsed directives of an nginx configuration with its includes inlined, checked as
    nginx checks them (known directives in their contexts, with their numbers of arguments)."""
    payload = crossplane.parse(str(path), combine=True)
    assert payload["status"] == "ok", payload["errors"]
    parsed: list[dict[str, Any]] = payload["config"][0]["parsed"]
    return parsed


def _block(directives: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in directives if d["directive"] == name]


def _gateway_servers() -> dict[int, list[dict[str, Any]]]:
    """Each server block of the gateway by the port it listens on."""
    [http] = _block(_nginx(GATEWAY / "nginx.conf"), "http")
    servers: dict[int, list[dict[str, Any]]] = {}
    for server in _block(http["block"], "server"):
        [listen] = _block(server["block"], "listen")
        servers[int(listen["args"][0])] = server["block"]
    return servers


def test_the_gateway_config_parser_is_live(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text("events {}\nhttp { location / { return 204; } }\n")
    with pytest.raises(AssertionError, match="not allowed here"):
        _nginx(tmp_path / "nginx.conf")


def _gateway_target(server: list[dict[str, Any]], path: str) -> tuple[str, str]:
    """(host, path) the gateway's server sends a request for `path` to, as nginx picks the
    location: an exact (`=`) match first, else the regex locations in the order they are
    written, the first that matches (`~*`: case-insensitive, searched, not anchored unless
    the pattern is). The test below refuses any other kind of location, so this is all of
    nginx's matching that applies."""
    locations = _block(server, "location")
    exact = [loc for loc in locations if loc["args"][0] == "="]
    regex = [loc for loc in locations if loc["args"][0] == "~*"]
    chosen = next((loc for loc in exact if loc["args"][1] == path), None)
    if chosen is None:
        chosen = next((loc for loc in regex if re.search(loc["args"][1], path, re.I)), None)
    assert chosen is not None, f"no gateway location matches {path}"
    block = chosen["block"]
    if _block(block, "return"):
        return "gateway", path
    [assignment] = _block(block, "set")
    [proxy_pass] = _block(block, "proxy_pass")
    variable, upstream = assignment["args"]
    assert proxy_pass["args"] == [variable]
    target = urlsplit(upstream)
    assert target.scheme == "http"
    assert target.port == gateway.SERVICE_PORT
    # A URI in the proxied variable replaces the request's; without one it passes as sent.
    return str(target.hostname), target.path or path


def test_gateway_sends_every_route_to_a_service_that_serves_it() -> None:
    """As the Ingress test above, on the gateway's own files: every route any service
    declares, sent to either of the gateway's servers, reaches a Compose service whose app
    declares the same method and path; and each service's /health and /metrics are reachable
    as /health/<service>, /metrics/<service>."""
    served = _served_by_service()
    compose = _compose()["services"]
    servers = _gateway_servers()
    assert set(servers) == {8000, 8080}
    for port, server in servers.items():
        kinds = {loc["args"][0] for loc in _block(server, "location")}
        assert kinds <= {"=", "~*"}, f"{port}: a location kind the replay does not model"
        # Not vacuous: the paths two services share go to the one that serves each.
        assert _gateway_target(server, "/v1/feedback") == ("intake", "/v1/feedback")
        assert _gateway_target(server, "/v1/feedback/F1") == ("projections", "/v1/feedback/F1")
        misrouted = []
        for service, routes in served.items():
            for method, template in sorted(routes):
                path = _concrete(template)
                target, sent = _gateway_target(server, path)
                if (
                    target not in compose
                    or sent != path
                    or (method, template) not in served[target]
                ):
                    misrouted.append(f"{port}: {method} {template} ({service}) -> {target} {sent}")
        assert misrouted == []
        for service in ALL_SERVICES:
            for endpoint in ("health", "metrics"):
                assert ("GET", f"/{endpoint}") in served[service]
                reached = _gateway_target(server, f"/{endpoint}/{service}")
                assert reached == (service, f"/{endpoint}")


def test_compose_gateway_is_the_one_http_entrance() -> None:
    compose = _compose()
    services = compose["services"]
    entry = services["gateway"]
    assert entry["image"].startswith("nginx:")
    mounted = {
        Path(volume.split(":")[1]).name: DEPLOY / volume.split(":")[0]
        for volume in entry["volumes"]
    }
    assert mounted == {
        "nginx.conf": GATEWAY / "nginx.conf",
        "feedback-routes.conf": GATEWAY / "feedback-routes.conf",
    }
    assert all(path.is_file() for path in mounted.values())
    # The include in nginx.conf names the routes file where it is mounted.
    assert "include feedback-routes.conf;" in (GATEWAY / "nginx.conf").read_text()
    servers = _gateway_servers()
    # Published: the outer server only, where the client is the peer and X-Forwarded-For is
    # replaced; the inner one (which believes the console's X-Forwarded-For) is not.
    assert entry["ports"] == ["8000:8000"]
    assert not _block(servers[8000], "set_real_ip_from")
    [http] = _block(_nginx(GATEWAY / "nginx.conf"), "http")
    forwarded = [d["args"] for d in _block(http["block"], "proxy_set_header")]
    assert ["X-Forwarded-For", "$remote_addr"] in forwarded
    environment = compose["x-feedback-environment"]
    assert environment["FEEDBACK_CONSOLE_API_URL"] == "http://gateway:8080"
    assert _gateway_target(servers[8080], "/gateway/health")[0] == "gateway"
    assert "http://127.0.0.1:8080/gateway/health" in entry["healthcheck"]["test"]
    # The services believe X-Forwarded-For from any peer, so no peer but the gateway may
    # reach their HTTP port from outside.
    assert environment["FORWARDED_ALLOW_IPS"] == "*"
    for service in ALL_SERVICES:
        published = [str(p).split(":")[-1] for p in services[service].get("ports", [])]
        assert environment["FEEDBACK_HTTP_PORT"] not in published, service
