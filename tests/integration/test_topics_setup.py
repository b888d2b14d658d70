"""Topics as code against the real local Kafka: `apply` creates what is missing with the
declared partitions and configs, reports drift without changing it, and what the services
create at start matches the declarations."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

from contracts import topics
from services.common.bus import ensure_topics, platform_topics
from services.common.settings import Settings
from services.common.topics_setup import DAY_MS, apply, declared_topics, platform_departments

pytestmark = pytest.mark.integration


async def _topic_configs(settings: Settings, name: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        return {entry[0]: entry[1] for entry in response.resources[0][4]}
    finally:
        await admin.close()


def test_declarations_name_every_topic_and_compact_only_the_reports(settings: Settings) -> None:
    departments = platform_departments()
    assert departments, "the rule book names departments"
    specs = {s.name: s for s in declared_topics(settings, departments)}
    for name in (topics.FEEDBACK_RECEIVED, topics.CORRESPONDENCE, topics.FEEDBACK_EVENTS,
                 topics.DEADLETTER, topics.REPORTS):  # fmt: skip
        assert settings.topic(name) in specs
    for department in departments:
        assert settings.topic(topics.department_topic(department)) in specs
    compacted = {n for n, s in specs.items() if "compact" in s.configs["cleanup.policy"]}
    # The case-keyed topics carry many messages per key that all matter: never compacted.
    assert compacted == {settings.topic(topics.REPORTS)}
    assert specs[settings.topic(topics.FEEDBACK_EVENTS)].configs["retention.ms"] == str(14 * DAY_MS)
    assert platform_topics(settings, departments) == list(specs)


def test_min_insync_above_replication_is_refused(settings: Settings) -> None:
    wrong = settings.model_copy(
        update={"topic_replication_factor": 1, "topic_min_insync_replicas": 2}
    )
    with pytest.raises(ValueError, match="MIN_INSYNC"):
        declared_topics(wrong, [])


async def test_apply_creates_then_reports_drift(settings: Settings) -> None:
    specs = declared_topics(settings, ["logistics", "after_sales"])
    planned = await apply(settings, specs, dry_run=True)
    assert [r.action for r in planned] == ["create"] * len(specs)
    assert "retention.ms" in planned[0].differences[0]

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        assert not {s.name for s in specs} & set(await admin.list_topics()), "dry run created"

        created = await apply(settings, specs)
        assert [r.action for r in created] == ["created"] * len(specs)
        events = settings.topic(topics.FEEDBACK_EVENTS)
        configs = await _topic_configs(settings, events)
        assert configs["cleanup.policy"] == "delete"
        assert configs["retention.ms"] == str(14 * DAY_MS)
        assert configs["min.insync.replicas"] == "1"
        [described] = await admin.describe_topics([events])
        assert len(described["partitions"]) == settings.topic_partitions
        reports_topic = await _topic_configs(settings, settings.topic(topics.REPORTS))
        assert reports_topic["cleanup.policy"] == "compact"

        again = await apply(settings, specs)
        assert [r.action for r in again] == ["ok"] * len(specs)

        # Drift made by hand: a shorter retention on the events topic, and a department
        # topic created with fewer partitions before the declarations knew it.
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    events,
                    {"cleanup.policy": "delete", "retention.ms": "3600000"},
                )
            ]
        )
        extra = settings.topic(topics.department_topic("quality"))
        await admin.create_topics([NewTopic(extra, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    with_extra = declared_topics(settings, ["logistics", "after_sales", "quality"])
    drift = {r.name: r for r in await apply(settings, with_extra)}
    assert drift[events].action == "differs"
    assert drift[events].differences == [f"retention.ms=3600000, declared {14 * DAY_MS}"]
    assert drift[extra].action == "differs"
    assert any("2 partitions, declared 4" in d for d in drift[extra].differences)
    assert any(d.startswith("retention.ms=") for d in drift[extra].differences)
    # Reported, never changed.
    assert (await _topic_configs(settings, events))["retention.ms"] == "3600000"


async def test_what_services_create_at_start_matches_the_declarations(settings: Settings) -> None:
    departments = platform_departments()
    await ensure_topics(settings, platform_topics(settings, departments))
    reports = await apply(settings, declared_topics(settings, departments), dry_run=True)
    assert {r.action for r in reports} == {"ok"}, [r.line() for r in reports]


def test_cli_apply_dry_run_then_apply(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from feedback_cli.main import app

    # Only the Kafka settings: the topics job needs no database URL or keys.
    for variable in ("DATABASE_URL", "FEEDBACK_PII_KEY", "FEEDBACK_AUTH_TOKEN_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    monkeypatch.setenv("FEEDBACK_TOPIC_PREFIX", settings.topic_prefix)
    runner = CliRunner()
    total = len(declared_topics(settings, platform_departments()))

    planned = runner.invoke(app, ["topics", "apply", "--dry-run"])
    assert planned.exit_code == 0, planned.output
    assert f"{total} topics: {total} create (dry run)" in planned.output
    assert f"create   {settings.topic(topics.FEEDBACK_EVENTS)}: partitions=4" in planned.output

    applied = runner.invoke(app, ["topics", "apply"])
    assert applied.exit_code == 0, applied.output
    assert f"{total} topics: {total} created" in applied.output

    checked = runner.invoke(app, ["topics", "apply", "--dry-run"])
    assert f"{total} topics: {total} ok (dry run)" in checked.output

    monkeypatch.setenv("FEEDBACK_TOPIC_MIN_INSYNC_REPLICAS", "2")
    refused = runner.invoke(app, ["topics", "apply"])
    assert refused.exit_code == 2
