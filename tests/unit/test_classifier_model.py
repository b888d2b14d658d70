"""The rules with the statistical model (issue #12): dangerous cases told in everyday words
are urgent, look-alikes are not, decisions explain themselves, and the frozen evaluation
set's aggregate figures stay above stated minimums (its items are never shown)."""

from __future__ import annotations

import pytest

from contracts.codes import Priority
from services.routing.classifier import Classifier, FeedbackText, load_rulebook
from services.routing.classifier.evaluation import (
    FROZEN_EVAL,
    TRAINING,
    LabelledItem,
    evaluate,
    load_labelled,
)
from services.routing.classifier.model import JOINT


@pytest.fixture(scope="module")
def hybrid() -> Classifier:
    classifier = Classifier.trained(load_rulebook())
    assert classifier.model is not None
    return classifier


@pytest.mark.parametrize(
    "text",
    [
        "插座那里有股焦糊味，还一直噼啪响",
        "The charger got so hot it melted the cable and there was smoke",
        "有人在外地登录了我的账号，还把绑定手机改了",
        "Someone in another city used my card five times on your site",
    ],
)
def test_dangers_in_everyday_words_are_urgent(hybrid: Classifier, text: str) -> None:
    decision = hybrid.classify(FeedbackText(text))
    assert decision.priority == Priority.urgent, decision.rules[:3]
    assert not decision.needs_triage


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("插座那里有股焦糊味，还一直噼啪响", "safety"),
        ("The charger got so hot it melted the cable and there was smoke", "safety"),
        ("有人在外地登录了我的账号，还把绑定手机改了", "fraud"),
        ("Someone in another city used my card five times on your site", "fraud"),
    ],
)
def test_the_urgent_score_names_its_danger_kind_and_why(
    hybrid: Classifier, text: str, kind: str
) -> None:
    assert hybrid.model is not None
    found = hybrid.model.predict(text)
    assert found["danger"].label == kind
    assert found["urgent_yes"].probability >= hybrid.book.model.urgent_threshold
    assert found["urgent_yes"].because  # the features that made it urgent, by name
    assert not any(f.startswith(("c:", "4:")) for f in found["urgent_yes"].because)


def test_a_look_alike_scores_low_on_every_danger(hybrid: Classifier) -> None:
    assert hybrid.model is not None
    found = hybrid.model.predict("这款太火爆了，抢了三次才买到，好评")
    assert found["urgent_yes"].probability < hybrid.book.model.urgent_threshold


@pytest.mark.parametrize("text", ["这款太火爆了，抢了三次才买到，好评", "建议App增加夜间模式"])
def test_look_alikes_and_plain_matters_are_not_urgent(hybrid: Classifier, text: str) -> None:
    assert hybrid.classify(FeedbackText(text)).priority != Priority.urgent


def test_a_decision_names_the_model_and_the_rules(hybrid: Classifier) -> None:
    decision = hybrid.classify(FeedbackText("账单里多扣了一笔39元的服务费，要求退款"))
    assert decision.rules[0].startswith("model.type:complaint p=")
    assert any(rule.startswith("model.subcategory:billing/") for rule in decision.rules)
    assert decision.department == "finance"


def test_type_subcategory_department_and_priority_come_as_a_filed_combination(
    hybrid: Classifier,
) -> None:
    """Decided one by one, the four fields can disagree (praise filed as an urgent billing
    error for logistics); decided together they are always a combination supervisors filed."""
    model = hybrid.model
    assert model is not None
    texts = [
        item.text for path in sorted(TRAINING.glob("train_0*.psv")) for item in load_labelled(path)
    ] + [
        "ok",
        "？？？",
        "谢谢，但是账单错了，快递也没到",
        "great app but charged twice and the box was crushed",
    ]
    for text in texts:
        found = model.predict(text, explain=0)
        combination = tuple(found[name].label for name in JOINT)
        assert combination in model.combinations, (combination, text)


@pytest.mark.parametrize("text", ["关于上次那个事情", "关于那件事", "嗯", "hi there"])
def test_a_message_naming_no_matter_goes_to_a_person(hybrid: Classifier, text: str) -> None:
    # The model, sure of a guess made from a few common words, is not enough (it called the
    # first one praise at p 0.68).
    assert hybrid.classify(FeedbackText(text)).needs_triage


@pytest.mark.parametrize("text", ["退款呢？", "app又崩", "still not here, order 4411"])
def test_a_short_message_naming_its_matter_is_routed(hybrid: Classifier, text: str) -> None:
    assert not hybrid.classify(FeedbackText(text)).needs_triage


# Stated minimums on the frozen set (measured once at 88.8 / 71.0 / 80.3 / 76.8 %, urgent
# recall 96.4 %, 11.6 % of non-urgent made urgent): a regression fails here.
MINIMUM = {"type": 0.85, "subcategory": 0.67, "priority": 0.77, "department": 0.73}


def test_the_frozen_set_stays_above_its_minimums(hybrid: Classifier) -> None:
    items = load_labelled(FROZEN_EVAL)
    assert len(items) >= 400
    report = evaluate(hybrid, items, "frozen")
    below = {f: round(report.accuracy(f), 3) for f, m in MINIMUM.items() if report.accuracy(f) < m}
    assert not below, f"accuracy below the stated minimum: {below}"
    urgent = [i for i in items if i.expected["priority"] == "urgent"]
    others = [i for i in items if i.expected["priority"] != "urgent"]

    def urgent_share(group: list[LabelledItem]) -> float:
        decided = [hybrid.classify(FeedbackText(i.text, customer_tier=i.tier)) for i in group]
        return sum(d.priority == Priority.urgent for d in decided) / len(group)

    # Shares computed first: an assertion on the call would print the frozen items.
    recall, made_urgent = round(urgent_share(urgent), 3), round(urgent_share(others), 3)
    assert recall >= 0.95, f"urgent recall {recall}"
    assert made_urgent <= 0.15, f"non-urgent made urgent {made_urgent}"
