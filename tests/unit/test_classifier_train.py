"""`feedback train`'s decision (issue #12, learning from people): a candidate model replaces
the active one only when it is not worse on the frozen set's aggregate figures."""

from __future__ import annotations

import base64

import pytest

from services.common.masking import Personal, mask_contacts
from services.routing.classifier.evaluation import FIELDS
from services.routing.classifier.registry import SigningKeyError, signing_key
from services.routing.classifier.training import Figures, FrozenTexts, not_worse


def figures(
    accuracy: float = 0.90,
    caught: int = 57,
    raised: int = 10,
    triaged: int = 20,
    **fields: float,
) -> Figures:
    """400 texts, 60 of them urgent."""
    return Figures(
        items=400,
        accuracy={name: fields.get(name, accuracy) for name in FIELDS},
        urgent=60,
        caught=caught,
        others=340,
        raised=raised,
        triaged=triaged,
    )


def test_equal_figures_are_not_worse() -> None:
    verdict = not_worse(figures(), figures())
    assert verdict.not_worse and verdict.reasons == ()


def test_better_everywhere_is_not_worse() -> None:
    assert not_worse(figures(0.93, caught=59, raised=5, triaged=10), figures()).not_worse


def test_one_dangerous_case_fewer_caught_is_worse_whatever_else_improves() -> None:
    verdict = not_worse(figures(0.99, caught=56, raised=0, triaged=0), figures())
    assert not verdict.not_worse
    assert verdict.reasons == ("urgent recall 93.3% below the active's 95.0%",)


def test_false_alarms_may_rise_up_to_five_percent_not_beyond() -> None:
    # 17/340 = 5.0 %: at the ceiling; 18/340 = 5.3 %: above it.
    assert not_worse(figures(raised=17), figures(raised=3)).not_worse
    verdict = not_worse(figures(raised=18), figures(raised=3))
    assert verdict.reasons == ("non-urgent made urgent 5.3% above 5.0%",)


def test_false_alarms_above_the_ceiling_may_not_rise_further() -> None:
    assert not_worse(figures(raised=25), figures(raised=25)).not_worse
    assert not not_worse(figures(raised=26), figures(raised=25)).not_worse


def test_a_field_may_lose_one_point_when_the_mean_does_not_fall() -> None:
    # type -1 point, priority +1 point: the mean is unchanged.
    trade = figures(type=0.89, priority=0.91)
    assert not_worse(trade, figures()).not_worse


def test_a_field_losing_more_than_one_point_is_worse_even_when_the_mean_rises() -> None:
    verdict = not_worse(figures(0.95, type=0.885), figures())
    assert not verdict.not_worse
    assert verdict.reasons == ("type 88.5% more than 1 point below the active's 90.0%",)


def test_a_lower_mean_is_worse_even_within_each_fields_tolerance() -> None:
    verdict = not_worse(figures(0.895), figures())
    assert not verdict.not_worse
    assert len(verdict.reasons) == 1 and verdict.reasons[0].startswith("mean accuracy")


def test_triage_may_grow_by_two_points_at_most() -> None:
    assert not_worse(figures(triaged=28), figures(triaged=20)).not_worse  # +2.0 points
    verdict = not_worse(figures(triaged=29), figures(triaged=20))  # +2.25 points
    assert verdict.reasons == ("sent to triage 7.2%, more than 2 points above the active's 5.0%",)


def test_every_reason_is_given() -> None:
    verdict = not_worse(figures(0.80, caught=50, raised=30, triaged=60), figures())
    assert len(verdict.reasons) == len(FIELDS) + 4  # recall, alarms, mean, triage


def test_the_signing_key_is_32_bytes_of_base64() -> None:
    assert signing_key(base64.b64encode(bytes(32)).decode()) == bytes(32)
    with pytest.raises(SigningKeyError, match="must be base64"):
        signing_key("REPLACE_ME: base64 of 32 random bytes")
    with pytest.raises(SigningKeyError, match="32 bytes"):
        signing_key(base64.b64encode(bytes(16)).decode())


def test_a_frozen_text_is_known_again_masked_or_lightly_edited() -> None:
    """Corrections are stored masked; the frozen set's texts are not: the check that keeps
    frozen texts out of training must see through the masks (found in review)."""
    written = "我是张三丰，住在幸福路88号3单元，手机13812345678，热水器漏电把我电了一下，太危险了！"
    english = "The App keeps crashing when I open it, mail me at li.wei@example.com"
    frozen = FrozenTexts([written, english])
    own = Personal(name="张三丰", address="幸福路88号3单元")
    assert frozen.holds(mask_contacts(written, own))
    assert frozen.holds(written.rstrip("！"))
    assert frozen.holds(mask_contacts(english).lower().rstrip("m"))
    assert not frozen.holds("热水器漏电了")
    assert not frozen.holds("The app keeps logging me out, every single day")
