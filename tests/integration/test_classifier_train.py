"""`feedback train` on real PostgreSQL (issue #12, learning from people): supervisors'
corrections recorded through the Case aggregate and the case store come out as labelled
texts; a worse candidate is stored with its figures but not activated, a not-worse one is
activated; services load the active version, and only when its signature verifies.

Trained on a few training files (seconds), not the whole set (half a minute)."""

from __future__ import annotations

import base64
import secrets
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from contracts.codes import Channel
from contracts.events import Registration
from deploy.postgres_server import LocalPostgres, create_database
from services.cases.domain import Case
from services.cases.store import CaseStore
from services.routing.classifier import Classifier, FeedbackText, load_rulebook
from services.routing.classifier.evaluation import (
    FROZEN_EVAL,
    TRAINING,
    LabelledItem,
    load_labelled,
)
from services.routing.classifier.registry import ModelRegistry
from services.routing.classifier.training import read_corrections, train
from services.runtime import Platform

GOOD = ("labelled_tune.psv", "train_01.psv", "train_02.psv")
POOR = ("labelled_holdout.psv",)


@pytest.fixture
def database(postgres: LocalPostgres) -> str:
    return create_database(postgres.url, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


def _register(store: CaseStore, serial: int, text: str, tier: str = "normal") -> Case:
    """A case as routing records it: registered, then classified by the rules."""
    now = datetime.now(UTC)
    registration = Registration(
        feedback_number=f"F20250101-{serial:04d}",
        received_at=now,
        registered_at=now,
        channel=Channel.web_form,
        customer_ref=f"客户-2025-{serial:04d}",
        customer_tier=tier,
        description=text,
        receiver="web",
    )
    case = Case.register(uuid.uuid4(), registration)
    decision = Classifier(load_rulebook()).classify(FeedbackText(text, customer_tier=tier))
    case.classify(decision.as_dict(), "routing")
    store.save(case)
    return case


def _reclassify(store: CaseStore, case: Case, category: str, subcategory: str, kind: str) -> None:
    """As RoutingService.reclassify decides it."""
    book = load_rulebook()
    found = store.get_case(case.id)
    decision: dict[str, Any] = {
        **(found.classification or {}),
        "type": kind,
        "category": category,
        "subcategory": subcategory,
        "department": book.department_for(category, subcategory),
        "confidence": 1.0,
        "needs_triage": False,
        "rules": ["manual:sup1"],
    }
    found.reclassify(decision, "sup1", "wrong category")
    store.save(found)


def _override(store: CaseStore, case: Case, priority: str) -> None:
    found = store.get_case(case.id)
    found.override_priority(priority, "sup1", "the customer's safety")
    store.save(found)


def test_corrections_come_out_with_the_latest_correction_and_the_classified_rest(
    database: str,
) -> None:
    store = CaseStore(database)
    book = load_rulebook()
    reclassified = _register(store, 1, "The app keeps logging me out, every single day")
    _reclassify(store, reclassified, "product_function", "malfunction", "complaint")
    _override(store, reclassified, "high")
    twice = _register(store, 2, "插座冒烟了还有焦味", tier="vip")
    _override(store, twice, "low" if twice.priority != "low" else "medium")
    _override(store, twice, "urgent")
    _register(store, 3, "谢谢你们的客服，很耐心")  # classified only: not a correction
    unknown = _register(store, 4, "Something about a retired category")
    found = store.get_case(unknown.id)
    found.reclassify(
        {**(found.classification or {}), "category": "retired", "subcategory": "gone"}, "sup1", "x"
    )
    store.save(found)
    frozen_like = _register(store, 5, "A text the frozen set holds")
    _override(store, frozen_like, "urgent" if frozen_like.priority != "urgent" else "low")
    frozen = [LabelledItem("a text the FROZEN set holds", {}, "normal", 1)]

    corrections = read_corrections(CaseStore(database, create_table=False), book, frozen)

    assert corrections.unusable == 1 and corrections.in_frozen_set == 1
    by_number = {c.feedback_number: c for c in corrections.found}
    assert sorted(by_number) == ["F20250101-0001", "F20250101-0002"]
    first = by_number["F20250101-0001"]
    assert first.text == "The app keeps logging me out, every single day"
    assert first.tier == "normal"
    classified = reclassified.classification or {}
    assert first.labels == {
        "type": "complaint",
        "category": "product_function",
        "subcategory": "malfunction",
        "priority": "high",
        "department": book.department_for("product_function", "malfunction"),
        "emotion": classified["emotion"],
        "flags": ",".join(sorted(set(classified["flags"]) - {"repeat"})),
    }
    second = by_number["F20250101-0002"]
    assert second.tier == "vip"
    assert second.labels["priority"] == "urgent"  # the latest of two overrides
    assert second.labels["subcategory"] == twice.classification["subcategory"]  # type: ignore[index]


def _subset(folder: Path, names: tuple[str, ...]) -> list[Path]:
    folder.mkdir()
    for name in names:
        shutil.copy(TRAINING / name, folder / name)
    return sorted(folder.glob("*.psv"))


def test_a_worse_candidate_is_not_activated_a_not_worse_one_is_and_services_load_it(
    database: str, key: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDBACK_CACHE_DIR", str(tmp_path / "cache"))
    good = _subset(tmp_path / "good", GOOD)
    poor = _subset(tmp_path / "poor", POOR)
    empty = tmp_path / "empty"
    empty.mkdir()
    registry = ModelRegistry(database, key)
    registry.create_schema()
    store = CaseStore(database)
    book = load_rulebook()
    frozen = load_labelled(FROZEN_EVAL)

    def run(files: list[Path], dry_run: bool = False) -> Any:
        return train(
            registry, store, book, frozen, files, tmp_path / "good", "test", dry_run=dry_run
        )

    # Nothing stored: compared with the model trained from the fallback folder (the same
    # files): equal figures are not worse.
    first = run(good)
    assert first.active_source.endswith("(no stored model active)")
    assert first.candidate == first.active
    assert first.verdict.not_worse and first.activated
    assert registry.active_version() == first.stored_version

    # Far less data: worse; stored with its figures, no model, the first stays active.
    worse = run(poor)
    assert worse.active_source == f"version {first.stored_version}"
    assert not worse.verdict.not_worse and worse.verdict.reasons
    assert not worse.activated and worse.stored_version is not None
    assert registry.active_version() == first.stored_version

    dry = run(good, dry_run=True)
    assert dry.verdict.not_worse and dry.stored_version is None

    again = run(good)
    assert again.activated and registry.active_version() == again.stored_version

    versions = {v.version: v for v in registry.versions()}
    assert [v for v in versions] == [
        again.stored_version,
        worse.stored_version,
        first.stored_version,
    ]
    assert versions[worse.stored_version].decision.startswith("not activated: ")
    assert not versions[worse.stored_version].has_model
    assert versions[worse.stored_version].figures["urgent"] == worse.candidate.urgent
    assert (versions[again.stored_version].compared_with or {})["source"] == (
        f"version {first.stored_version}"
    )

    # A service starting now: the active version, with no training data at hand.
    service = Classifier.trained(book, empty, ModelRegistry(database, key))
    assert service.model_version == again.stored_version and service.model is not None
    text = "插座那里有股焦糊味，还一直噼啪响"
    assert service.classify(FeedbackText(text)).as_dict() == (
        Classifier.trained(book, tmp_path / "good").classify(FeedbackText(text)).as_dict()
    )

    # A roll-back to the first version.
    registry.activate(first.stored_version, book.model_dump_json().encode())
    assert Classifier.trained(book, empty, registry).model_version == first.stored_version

    # The routing service as `feedback up`/`feedback run routing` builds it: the active
    # version, from the settings' key.
    platform = Platform(_settings(database, key), services=("routing",))
    platform.build()
    assert platform.routing is not None
    assert platform.routing.classifier.model_version == first.stored_version


def test_a_model_that_does_not_verify_is_never_loaded(
    database: str, key: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDBACK_CACHE_DIR", str(tmp_path / "cache"))
    poor = _subset(tmp_path / "poor", POOR)
    empty = tmp_path / "empty"
    empty.mkdir()
    registry = ModelRegistry(database, key)
    registry.create_schema()
    book = load_rulebook()
    store = CaseStore(database)
    frozen = load_labelled(FROZEN_EVAL)
    outcome = train(registry, store, book, frozen, poor, tmp_path / "poor", "t")
    assert outcome.activated and outcome.corrections.found == []
    # The rules change: the stored version no longer runs, and the next `feedback train` is
    # compared with the files' model the services then run, and replaces it (found in review:
    # it could never activate again).
    changed = book.model_copy(update={"contrast_boost": book.contrast_boost + 0.5})
    after_change = train(registry, store, changed, frozen, poor, tmp_path / "poor", "t")
    assert f"version {outcome.stored_version} is active but" in after_change.active_source
    assert after_change.activated, after_change.verdict.reasons
    assert registry.active_version() == after_change.stored_version
    assert Classifier.trained(changed, empty, registry).model_version == after_change.stored_version
    registry.activate(outcome.stored_version, book.model_dump_json().encode())
    # A correction recorded since is trained on: one text more than the files hold.
    corrected = _register(store, 7, "我家孩子把充电器的小零件吞下去了")
    _override(store, corrected, "urgent" if corrected.priority != "urgent" else "high")
    dry = train(registry, store, book, frozen, poor, tmp_path / "poor", "t", dry_run=True)
    assert [c.feedback_number for c in dry.corrections.found] == ["F20250101-0007"]
    assert dry.training_items == outcome.training_items + 1
    assert dry.training_digest != outcome.training_digest
    assert Classifier.trained(book, empty, registry).model_version == outcome.stored_version

    # Another key (a row written by someone without ours): not loaded, trained from files.
    other = ModelRegistry(database, secrets.token_bytes(32))
    assert Classifier.trained(book, empty, other).model is None
    # Built for another rule book: not used.
    changed = book.model_copy(update={"contrast_boost": book.contrast_boost + 0.5})
    assert Classifier.trained(changed, empty, registry).model_version is None
    # The stored bytes altered: the signature no longer verifies, nothing is unpickled.
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("UPDATE classifier_models SET model = model || '\\x00'::bytea WHERE active")
    assert Classifier.trained(book, empty, registry).model is None
    # The services' registry comes from the settings' key; none without one.
    assert ModelRegistry.of(_settings(database, None)) is None
    assert ModelRegistry.of(_settings(database, key)) is not None


def _settings(database: str, key: bytes | None) -> Any:
    from services.common.settings import Settings

    return Settings(
        database_url=database,
        kafka_bootstrap_servers="127.0.0.1:9",
        pii_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        auth_token_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        model_signing_key=base64.b64encode(key).decode() if key else None,
    )
