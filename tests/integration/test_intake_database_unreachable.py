"""Intake with PostgreSQL away: a failed batch is answered unavailable at once instead of
being registered again one by one (each waiting for a connection once more); a failure of
the rows themselves is still isolated (tests/integration/test_hostile_input.py, one bad
submission fails alone in its batch)."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
import pytest
from faststream.kafka import KafkaBroker
from psycopg_pool import PoolTimeout

from contracts.codes import Channel
from services.common.database import open_pool
from services.common.settings import Settings
from services.intake import numbering, pii_vault, registration
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

POOL_TIMEOUT_S = 1.0


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (PoolTimeout("couldn't get a connection after 1.00 sec"), True),
        (psycopg.OperationalError("connection refused"), True),  # no SQLSTATE: client side
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.ConnectionFailure("connection failure"), True),
        (psycopg.errors.TooManyConnections("too many clients"), True),
        # One row's fault: the batch is split so that its neighbours are registered.
        (psycopg.errors.UniqueViolation("duplicate key"), False),
        (psycopg.errors.CheckViolation("violates check constraint"), False),
        (psycopg.errors.CharacterNotInRepertoire("invalid byte sequence"), False),
        (psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum"), False),
        (psycopg.errors.PipelineAborted("pipeline aborted"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_what_counts_as_the_database_being_away(error: Exception, unreachable: bool) -> None:
    assert registration.database_unreachable(error) is unreachable


def _submission(i: int) -> registration.Submission:
    return registration.Submission(
        channel=Channel.web_form,
        description=f"第{i}台冰箱不制冷",
        contact=pii_vault.Contact(phone=f"1390000{i:04d}"),
        receiver="web_form",
    )


async def test_a_batch_fails_fast_when_the_database_is_away(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A pool whose server refuses connections (PostgreSQL stopped, as the client sees it):
    twenty registrations sharing a batch all get IntakeUnavailable after one wait for a
    connection, not one more wait each."""
    # Nothing listens on this port: every connection attempt is refused.
    pool = open_pool(f"postgresql://feedback@127.0.0.1:{free_port()}/none", timeout=POOL_TIMEOUT_S)
    await pool.open(wait=False)
    serials = numbering.SerialAllocator(pool)
    feedback_numbering = numbering.FeedbackNumbering(serials)
    vault = pii_vault.PiiVault(pool, settings.pii_key_bytes, feedback_numbering)
    # Never started: nothing reaches the publishing step without the database.
    broker = KafkaBroker(settings.kafka_bootstrap_servers)
    registrar = registration.Registrar(settings, pool, broker, feedback_numbering, vault)
    running = asyncio.create_task(registrar.run())
    submissions = [_submission(i) for i in range(20)]
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="services.intake.registration"):
            answers = await asyncio.gather(
                *(registrar.register(s) for s in submissions), return_exceptions=True
            )
        elapsed = time.monotonic() - started
        requests = pool.get_stats().get("requests_num", 0)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.close()
    assert all(isinstance(a, registration.IntakeUnavailable) for a in answers), answers
    assert "database unreachable" in caplog.text
    assert "registering them one by one" not in caplog.text
    # One by one, each registration would have asked the pool again (and waited again).
    assert 1 <= requests < len(submissions), requests
    assert elapsed < 2 * POOL_TIMEOUT_S, elapsed
    print(
        f"{len(submissions)} registrations, database away: all 503 after {elapsed:.2f} s "
        f"(pool timeout {POOL_TIMEOUT_S} s), {requests} connection request(s)"
    )
