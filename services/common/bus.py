"""The Kafka bus: one FastStream broker per process, topics, and publishing contracts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol
from weakref import WeakKeyDictionary

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    TopicAlreadyExistsError,
)
from faststream import AckPolicy
from faststream.exceptions import IncorrectState
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.publisher.producer import AioKafkaFastProducerImpl
from psycopg_pool import AsyncConnectionPool

from contracts import topics
from contracts.events import CASE_EVENTS, type_names
from services.common.kafka_positions import (
    SliceConsumer,
    apply_slice_together,
    by_partition,
    resume_offset,
)
from services.common.metrics import broker_middlewares
from services.common.observability import trace_headers
from services.common.settings import Settings
from services.common.topics_setup import declared_topics

log = logging.getLogger(__name__)


class Keyed(Protocol):
    TOPIC: ClassVar[str]

    def key(self) -> bytes | None: ...

    def model_dump_json(self) -> str: ...


def make_broker(settings: Settings, client_id: str = "feedback") -> KafkaBroker:
    # acks=all + idempotence: an acknowledged write survives, and producer retries never
    # duplicate or reorder a partition's messages.
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        request_timeout_ms=int(settings.publish_timeout_s * 1000),
        logger=log,
        graceful_timeout=15.0,
        middlewares=broker_middlewares(),
    )


def platform_topics(settings: Settings, departments: Iterable[str] = ()) -> list[str]:
    # The declarations (services/common/topics_setup.py) are the one list of topics.
    return [spec.name for spec in declared_topics(settings, departments)]


async def ensure_topics(settings: Settings, names: Iterable[str]) -> None:
    """Create the platform's topics if missing (brokers here do not auto-create), as
    declared in services/common/topics_setup.py (partitions, replication, retention)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        departments = [
            n.removeprefix(settings.topic(topics.DEPARTMENT_PREFIX))
            for n in names
            if n.startswith(settings.topic(topics.DEPARTMENT_PREFIX))
        ]
        specs = {s.name: s for s in declared_topics(settings, departments)}
        wanted = [
            NewTopic(
                name,
                num_partitions=specs[name].partitions,
                replication_factor=specs[name].replication_factor,
                topic_configs=specs[name].configs,
            )
            if name in specs
            # A topic outside the declarations (a test's own): the same partitions.
            else NewTopic(
                name,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
            )
            for name in names
            if name not in existing
        ]
        if wanted:
            # Another instance may have created them first.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
        await _wait_for_leaders(admin, [t.name for t in wanted])
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while names:
        described = await admin.describe_topics(names)
        ready = [
            t["topic"]
            for t in described
            if t.get("error_code", 0) == 0
            and t["partitions"]
            and all(p["leader"] >= 0 for p in t["partitions"])
        ]
        names = [n for n in names if n not in ready]
        if not names:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topics without leaders: {names}")
        await asyncio.sleep(0.1)


# What goes to Kafka: the full topic name, the key and the encoded body.
Record = tuple[str, bytes | None, bytes]  # topic, key, body
HeadedRecord = tuple[str, bytes | None, bytes, dict[str, str]]  # ... and headers


def record_of(settings: Settings, message: Keyed) -> Record:
    return settings.topic(message.TOPIC), message.key(), message.model_dump_json().encode()


async def publish(broker: KafkaBroker, settings: Settings, message: Keyed) -> None:
    """Publish a contract message and wait until Kafka acknowledged it (acks=all).

    Raises why not (TimeoutError when no acknowledgement came within `publish_timeout_s`).
    """
    await publish_all(broker, settings, [record_of(settings, message)])


async def publish_many(
    broker: KafkaBroker, settings: Settings, messages: Sequence[Keyed]
) -> list[BaseException | None]:
    """Contract messages together; per message, None when Kafka acknowledged it, else why not."""
    return await publish_records(broker, settings, [record_of(settings, m) for m in messages])


async def publish_all(
    broker: KafkaBroker, settings: Settings, records: Sequence[Record | HeadedRecord]
) -> None:
    """Records together, raising the first failure: for senders that retry the whole lot."""
    failure = next((f for f in await publish_records(broker, settings, records) if f), None)
    if failure is not None:
        raise failure


async def publish_records(
    broker: KafkaBroker, settings: Settings, records: Sequence[Record | HeadedRecord]
) -> list[BaseException | None]:
    """Publish records together (the producer batches them) and wait for every
    acknowledgement; per record, None when Kafka acknowledged it, else why not.

    A record still unacknowledged after `publish_timeout_s` counts as not accepted.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.publish_timeout_s
    generation = _renewal_of(broker).generation
    futures: list[asyncio.Future[Any]] = []
    refused: BaseException | None = None
    # The sender's trace context (none when tracing is off); a record's own headers win.
    ambient = trace_headers()
    try:
        async with asyncio.timeout_at(deadline):
            for record in records:
                topic, key, body = record[0], record[1], record[2]
                extra = record[3] if len(record) > 3 else {}
                futures.append(
                    await broker.publish(
                        body,
                        topic,
                        key=key,
                        headers={"content-type": "application/json", **ambient, **extra},
                        no_confirm=True,
                    )
                )
    except Exception as error:  # the producer refused or stalled before sending them all
        refused = error
    outcomes: list[BaseException | None] = [refused] * len(records)
    if futures:
        _, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
        for index, future in enumerate(futures):
            if future in pending:
                future.cancel()
                outcomes[index] = TimeoutError("no acknowledgement from Kafka in time")
            else:
                outcomes[index] = future.exception()
    ended = next((o for o in outcomes if isinstance(o, _PRODUCER_ENDED)), None)
    if ended is not None:
        _renew_producer(broker, generation, ended)
    return outcomes


# After these the producer never sends again. aiokafka 0.14's idempotent producer gives a
# sequence number to a batch that expires unsent (Kafka away longer than a request timeout);
# once Kafka is back it refuses the next batch as out of order, and the producer's sender
# stops for good (the Java client bumps its epoch instead; aio-libs/aiokafka#1017). A
# producer whose renewal could not start yet leaves FastStream's IncorrectState, one whose
# replacement failed half-way aiokafka's ProducerClosed.
_PRODUCER_ENDED = (OutOfOrderSequenceNumber, ProducerFenced, ProducerClosed, IncorrectState)


class _Renewal:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.generation = 0  # producers replaced so far
        self.task: asyncio.Task[None] | None = None


_RENEWALS: WeakKeyDictionary[KafkaBroker, _Renewal] = WeakKeyDictionary()


def _renewal_of(broker: KafkaBroker) -> _Renewal:
    return _RENEWALS.setdefault(broker, _Renewal())


def _renew_producer(broker: KafkaBroker, generation: int, error: BaseException) -> None:
    """Replace the broker's Kafka producer (a new producer id, sequences from 0) in the
    background, once for all publishers that saw the same one fail: callers answer on time
    meanwhile (intake a 503, the relay a retry), and the next publish uses the new one."""
    if not broker.running:
        return  # stopping: FastStream's IncorrectState then means "disconnected on purpose"
    renewal = _renewal_of(broker)
    if renewal.generation != generation or (renewal.task and not renewal.task.done()):
        return

    async def renew() -> None:
        async with renewal.lock:
            if renewal.generation != generation:
                return
            log.warning("the Kafka producer stopped sending (%r): replacing it", error)
            producer = broker.config.producer
            assert isinstance(producer, AioKafkaFastProducerImpl)
            try:
                await producer.disconnect()
                # The options FastStream built the first producer from.
                fresh = AIOKafkaProducer(**broker._connection_kwargs)
                await producer.connect(fresh, producer.serializer, producer.codec)
            except Exception:
                # Kafka still away: the next publish fails with IncorrectState and tries again.
                log.exception("replacing the Kafka producer failed; retrying on the next publish")
                return
            renewal.generation += 1
            log.warning("the Kafka producer was replaced")

    renewal.task = asyncio.create_task(renew(), name="kafka-producer-renewal")


Handler = Callable[..., Awaitable[None]]


def batch_subscriber(
    broker: KafkaBroker,
    settings: Settings,
    topic: str,
    group: str,
    listener: ConsumerRebalanceListener | None = None,
) -> Callable[[Handler], object]:
    """The subscriber every exactly-once consumer uses: batches from the earliest offset,
    offsets committed only after the handler succeeded, and on an error the batch is
    read again (the handler's stored positions make the repeat harmless)."""
    subscriber: Callable[[Handler], object] = broker.subscriber(
        settings.topic(topic),
        group_id=group,
        batch=True,
        max_records=settings.consumer_batch_size,
        # An empty poll is followed by a sleep this long (FastStream): short, so a quiet
        # consumer answers the next event within tens of milliseconds.
        batch_timeout_ms=50,
        fetch_min_bytes=64 * 1024 if settings.consumer_fetch_wait_ms else 1,
        fetch_max_wait_ms=settings.consumer_fetch_wait_ms or 500,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # Each handler validates its records' bytes with its own pydantic model: FastStream's
        # JSON decoding of every message first would be thrown away (once per group per event).
        decoder=_raw_bodies,
        title=group,
        listener=listener,
    )
    return subscriber


def consume_exactly_once(
    broker: KafkaBroker,
    settings: Settings,
    pool: AsyncConnectionPool,
    topic: str,
    group: str,
    consumers: Sequence[SliceConsumer],
    after_batch: Callable[[], None] | None = None,
) -> None:
    """One subscription for a service's exactly-once consumers of `topic`
    (`kafka_positions.SliceConsumer`s): each partition slice is applied by all of them in
    one transaction, each past its own stored position; `after_batch` runs once a batch
    is committed.

    The positions stored with the results are the truth, not the group's committed Kafka
    offsets: on each assignment a partition is read from the least stored position of the
    consumers, so that a consumer joining the subscription (or a group changed, or a
    database restored from a backup) gets what lies between instead of passing over it."""
    resume = _ResumeAtStoredPositions(pool, [c.name for c in consumers], group)

    async def publish_dead_letter(letter: Keyed) -> None:
        await publish(broker, settings, letter)

    subscriber = batch_subscriber(broker, settings, topic, group, listener=resume)
    # The listener seeks with the subscriber's Kafka consumer, made when it starts.
    resume.subscriber = subscriber

    @subscriber
    async def on_records(body: list[Any], msg: KafkaMessage) -> None:
        for records in partition_slices(msg).values():
            await apply_slice_together(pool, consumers, records, publish_dead_letter)
        if after_batch is not None:
            after_batch()


class _ResumeAtStoredPositions(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks each assigned partition to where the subscription's consumers stored they
    stopped (aiokafka's documented use of the listener for offsets kept outside Kafka)."""

    def __init__(self, pool: AsyncConnectionPool, names: list[str], group: str) -> None:
        self.pool = pool
        self.names = names
        self.group = group
        self.subscriber: Any = None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        consumer = getattr(self.subscriber, "consumer", None)
        if consumer is None or not assigned:
            return
        try:
            async with self.pool.connection() as conn:
                for partition in assigned:
                    offset = await resume_offset(
                        conn, self.names, partition.topic, partition.partition
                    )
                    consumer.seek(partition, offset)
        except Exception:
            # From the committed offsets then: never past a stored position in normal
            # operation (the offsets are committed after the positions).
            log.exception(
                "%s: stored positions unreadable; resuming at committed offsets", self.group
            )


def _raw_bodies(message: Any) -> Any:
    return message.body


# The relay names each case event's type in this header, so that a consumer can pass over
# the events it has no use for without validating their bodies.
EVENT_TYPE_HEADER = "event-type"
KNOWN_EVENT_TYPES = type_names(*CASE_EVENTS)


def concerns(record: Any, wanted: frozenset[str]) -> bool:
    """Whether a consumer record may be one of the `wanted` event types: yes unless its
    event-type header names another type this version knows. A record without the header,
    or naming a type from a newer version, is read: validating it makes it a dead letter
    that can be replayed after the upgrade, instead of passing it over unseen."""
    for key, value in record.headers or ():
        if key == EVENT_TYPE_HEADER:
            name = bytes(value).decode()
            return name in wanted or name not in KNOWN_EVENT_TYPES
    return True


def partition_slices(message: Any) -> dict[tuple[str, int], list[Any]]:
    """The consumer records of a FastStream batch message, by (topic, partition)."""
    raw = message.raw_message
    return by_partition(raw if isinstance(raw, tuple) else (raw,))
