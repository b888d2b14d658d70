"""Every Kafka topic the platform uses, declared as code: partitions, replication and the
topic configs, and `apply`, which creates what is missing and reports what differs.

The services create missing topics at start from the same declarations
(`services.common.bus.ensure_topics`); `feedback topics apply` (the deployment's one-shot
job) does it ahead of them and also says where a cluster has drifted from the code.

Cleanup policy, and why no event topic is compacted: compaction keeps only the newest
message per key, and every topic below except the reports is keyed by the case (or
unkeyed), carrying many messages per key that all matter in order - compacting
`feedback.events` or a `dept.*` topic would leave a reader the last event of each case,
not its history; compacting `feedback.received` or `feedback.correspondence` would drop
earlier feedback or replies about the same case before they were handled. Those topics are
deleted by age instead, with retention sized to outlast an outage of their consumers (the
event store, not Kafka, is the record: projections are rebuilt from it). The reports topic
is keyed by report (`weekly:2026-W07`): a re-announcement of the same report supersedes the
earlier one, so compaction keeps exactly the latest announcement of every report, forever,
at a few dozen messages a year.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from contracts import topics

DAY_MS = 24 * 3600 * 1000


class TopicSettings(Protocol):
    """What the declarations read from the settings (`Settings` has all of it)."""

    kafka_bootstrap_servers: str
    topic_prefix: str
    topic_partitions: int
    topic_replication_factor: int
    topic_min_insync_replicas: int


@dataclass(frozen=True)
class TopicSpec:
    name: str  # the full name, with the deployment's prefix
    partitions: int
    replication_factor: int
    configs: dict[str, str]
    why: str = field(default="", compare=False)


@dataclass(frozen=True)
class Policy:
    cleanup: str
    retention_days: float | None  # None: kept until compaction replaces it
    why: str


# By topic (department topics share one entry). Retention outlasts the longest stretch
# its consumers could be away: the Spring Festival and National Day holidays run 7-8 days
# (a department's own subscriber may well be off that long), with margin.
POLICIES: dict[str, Policy] = {
    topics.FEEDBACK_RECEIVED: Policy(
        "delete", 14, "until routing has made each feedback a case; covers a holiday-long outage"
    ),
    topics.CORRESPONDENCE: Policy(
        "delete", 14, "until routing has recorded each reply on its case; many per case"
    ),
    topics.FEEDBACK_EVENTS: Policy(
        "delete",
        14,
        "every case event in order; readers need the history, the store keeps the record",
    ),
    topics.DEADLETTER: Policy(
        "delete", 90, "kept long enough to investigate; the dead-letter tables keep them too"
    ),
    topics.REPORTS: Policy(
        "compact", None, "keyed by report: the latest announcement of every report stays"
    ),
    topics.DEPARTMENT_PREFIX: Policy(
        "delete",
        30,
        "a department's only feed; its own subscriber may be away longer than ours",
    ),
}


def _spec(settings: TopicSettings, name: str, policy: Policy) -> TopicSpec:
    configs = {
        "cleanup.policy": policy.cleanup,
        # Acknowledged writes (acks=all) are on this many replicas before intake answers 202.
        "min.insync.replicas": str(settings.topic_min_insync_replicas),
    }
    if policy.retention_days is not None:
        configs["retention.ms"] = str(int(policy.retention_days * DAY_MS))
    else:
        # A compacted topic keeps the latest per key regardless of age.
        configs["retention.ms"] = "-1"
    return TopicSpec(
        # The same rule as Settings.topic: a deployment may prefix names to share a cluster.
        name=f"{settings.topic_prefix}{name}",
        # Every topic has the same count, so every consumer group scales by the same
        # number of members, and the per-case key lands on the same partition number on
        # every topic.
        partitions=settings.topic_partitions,
        replication_factor=settings.topic_replication_factor,
        configs=configs,
        why=policy.why,
    )


def declared_topics(settings: TopicSettings, departments: Iterable[str]) -> list[TopicSpec]:
    """Every topic the platform uses: the fixed ones, and `dept.<d>` per department."""
    if settings.topic_min_insync_replicas > settings.topic_replication_factor:
        raise ValueError(
            f"FEEDBACK_TOPIC_MIN_INSYNC_REPLICAS ({settings.topic_min_insync_replicas}) is more "
            f"than FEEDBACK_TOPIC_REPLICATION_FACTOR ({settings.topic_replication_factor}): "
            "no write with acks=all could ever succeed"
        )
    fixed = [
        topics.FEEDBACK_RECEIVED,
        topics.CORRESPONDENCE,
        topics.FEEDBACK_EVENTS,
        topics.DEADLETTER,
        topics.REPORTS,
    ]
    specs = [_spec(settings, name, POLICIES[name]) for name in fixed]
    specs += [
        _spec(settings, topics.department_topic(d), POLICIES[topics.DEPARTMENT_PREFIX])
        for d in sorted(set(departments))
    ]
    return specs


def platform_departments() -> list[str]:
    """The departments of the rule book (config/classification.yaml), one topic each."""
    from services.routing.classifier import load_rulebook

    return list(load_rulebook().departments)


@dataclass
class TopicReport:
    name: str
    action: str  # "create", "created", "ok", "differs"
    differences: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.differences:
            return f"{self.action:<8} {self.name}"
        return f"{self.action:<8} {self.name}: " + "; ".join(self.differences)


def _describe(spec: TopicSpec) -> str:
    configs = " ".join(f"{k}={v}" for k, v in sorted(spec.configs.items()))
    return f"partitions={spec.partitions} replication={spec.replication_factor} {configs}"


async def apply(
    settings: TopicSettings, specs: Sequence[TopicSpec], *, dry_run: bool = False
) -> list[TopicReport]:
    """Create the declared topics that are missing (unless `dry_run`) and compare the
    existing ones with their declarations.

    Differences are reported, never changed: adding partitions moves keys to other
    partitions (a case's events would be read out of order across the change), fewer is
    impossible, replication changes need a reassignment plan, and a config set by hand on
    purpose should not be reverted by a deploy.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from services.common.bus import _wait_for_leaders

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        present = [s for s in specs if s.name in existing]
        reports = {s.name: TopicReport(s.name, "create", [_describe(s)]) for s in missing}
        if missing and not dry_run:
            new = [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=s.replication_factor,
                    topic_configs=s.configs,
                )
                for s in missing
            ]
            # A service starting at the same time (or metadata not yet showing a topic
            # just made) may have created some first: those are compared like the others.
            raced = _raise_errors(await admin.create_topics(new))
            await _wait_for_leaders(admin, [s.name for s in missing])
            for spec in missing:
                if spec.name in raced:
                    present.append(spec)
                    del reports[spec.name]
                else:
                    reports[spec.name].action = "created"
        for spec, found in zip(present, await _current(admin, present), strict=True):
            differences = _differences(spec, found)
            reports[spec.name] = TopicReport(spec.name, "differs" if differences else "ok")
            reports[spec.name].differences = differences
        return [reports[s.name] for s in specs]
    finally:
        await admin.close()


def _raise_errors(response: Any) -> set[str]:
    """aiokafka returns per-topic errors in the response instead of raising them: raise
    the first real one; the topics that already existed are returned."""
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    existed = set()
    for topic, code, *rest in response.topic_errors:
        if code == TopicAlreadyExistsError.errno:
            existed.add(topic)
        elif code:
            message = rest[0] if rest and rest[0] else ""
            raise for_code(code)(f"creating {topic}: {message}")
    return existed


@dataclass
class CurrentTopic:
    partitions: int
    replication_factor: int
    configs: dict[str, str]


async def _current(admin: Any, specs: Sequence[TopicSpec]) -> list[CurrentTopic]:
    if not specs:
        return []
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    described = {t["topic"]: t for t in await admin.describe_topics([s.name for s in specs])}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            name, entries = resource[3], resource[4]
            configs[name] = {entry[0]: entry[1] for entry in entries}
    found = []
    for spec in specs:
        partitions = described[spec.name]["partitions"]
        replicas = max((len(p["replicas"]) for p in partitions), default=0)
        found.append(CurrentTopic(len(partitions), replicas, configs.get(spec.name, {})))
    return found


def _differences(spec: TopicSpec, found: CurrentTopic) -> list[str]:
    differences = []
    if found.partitions != spec.partitions:
        differences.append(
            f"{found.partitions} partitions, declared {spec.partitions} (not changed: "
            "adding partitions reorders a case's messages across the change)"
        )
    if found.replication_factor != spec.replication_factor:
        differences.append(
            f"replication {found.replication_factor}, declared {spec.replication_factor} "
            "(not changed: needs a partition reassignment)"
        )
    for key, value in sorted(spec.configs.items()):
        if found.configs.get(key) != value:
            differences.append(f"{key}={found.configs.get(key)}, declared {value}")
    return differences


def apply_sync(
    settings: TopicSettings, departments: Iterable[str], *, dry_run: bool = False
) -> list[TopicReport]:
    """`apply` for the command line."""
    return asyncio.run(apply(settings, declared_topics(settings, departments), dry_run=dry_run))
