"""CPU-bound work on large inputs runs in worker threads, never on the event loop that
serves HTTP and the consumers (#13): hashing and sealing an attachment, sealing a kept
25 MiB mail, decoding a relay section."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from contracts import topics
from services.cases import relay
from services.common.settings import Settings
from services.intake import deadletters as intake_deadletters
from services.intake import evidence
from tests.conftest import messages_in, serve, wait_for
from tests.integration.test_relay_poison import store_case

pytestmark = pytest.mark.integration


def recording(threads: list[int], function: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return function(*args, **kwargs)

    return wrapper


async def test_an_attachment_is_hashed_and_sealed_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = evidence.EvidenceStore(
        evidence.FolderBlobs(tmp_path),
        max_bytes=64 * 1024 * 1024,
        allowed_types=("application/octet-stream",),
        key=b"k" * 32,
    )
    threads: list[int] = []
    monkeypatch.setattr(
        evidence, "hashlib", SimpleNamespace(sha256=recording(threads, hashlib.sha256))
    )
    data = b"\x00feedback" * (1024 * 1024)  # 9 MiB
    kept = await store.put(data, "scan.bin", "application/octet-stream")
    assert kept.sha256 == hashlib.sha256(data).hexdigest()
    assert threads and threading.get_ident() not in threads
    assert await store.open(kept.reference) == data


async def test_a_large_dead_letter_is_sealed_off_the_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    monkeypatch.setattr(
        intake_deadletters,
        "sealed_message",
        recording(threads, getattr(intake_deadletters, "sealed_message")),  # noqa: B009
    )
    async with serve(settings, ("intake",)) as running:
        kept = running.platform.deadletters
        assert kept is not None
        raw = b"From: someone\r\n\r\n" + b"x" * (8 * 1024 * 1024)
        await kept.keep("email", "unreadable", raw, {"receiver": "smtp"})
    assert threads and threading.get_ident() not in threads


async def test_the_relay_decodes_sections_off_the_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    monkeypatch.setattr(relay, "to_contract", recording(threads, getattr(relay, "to_contract")))  # noqa: B009
    store_case(settings, "F20261129-0201")
    async with serve(settings, services=("relay",)):
        await wait_for(
            lambda: _positive(messages_in(settings, topics.FEEDBACK_EVENTS)),
            timeout=20,
            what="the case relayed",
        )
    assert threads and threading.get_ident() not in threads


async def _positive(count: Any) -> bool:
    return int(await count) > 0
