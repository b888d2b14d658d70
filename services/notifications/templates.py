"""Message templates: one YAML file per kind under `templates/`, Chinese (`zh`) and English
(`en`) side by side, each a Jinja2 `title` and `body` rendered with the notification's
payload (the case's data, never personal data).

YAML rather than loose template files so that packaging ships them like every other
configuration file. Every template is rendered once with sample data at start: a broken
one stops the service instead of dead-lettering every message of its kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from jinja2 import (
    Environment,
    StrictUndefined,
    Template,
    TemplateError,
    pass_context,
    select_autoescape,
)
from jinja2.runtime import Context
from pydantic import BaseModel, ConfigDict

from contracts.codes import PRIORITY_LABELS, Priority

FOLDER = Path(__file__).resolve().parent / "templates"
LANGUAGES = ("zh", "en")

# Labels the templates show for codes; categories and departments come from the rule book.
CLOCK_LABELS: dict[str, tuple[str, str]] = {
    "first_response": ("首次响应", "first response"),
    "progress_update": ("进度更新", "progress update"),
    "co_handler_response": ("协办响应", "co-handler response"),
    "resolution": ("处理完成", "resolution"),
    "result_notice": ("结果告知", "result notice"),
}
FIELD_LABELS: dict[str, tuple[str, str]] = {
    "product_model": ("产品型号", "product model"),
    "purchase_date": ("购买日期", "purchase date"),
    "occurred_at": ("问题发生时间", "when it happened"),
    "service_type": ("服务类型", "service type"),
    "description": ("问题描述", "description of the problem"),
    "contact": ("联系方式", "how to reach you"),
}
CALLBACK_LABELS: dict[str, tuple[str, str]] = {
    "post_complaint": ("投诉处理后回访", "after a complaint"),
    "after_sales": ("售后回访", "after-sales"),
    "product_in_use": ("产品使用回访", "product in use"),
    "churn_warning": ("流失预警回访", "churn warning"),
    "quarterly_survey": ("季度满意度调查", "quarterly survey"),
}
ROLE_LABELS: dict[str, tuple[str, str]] = {
    "supervisor": ("主管", "supervisor"),
    "head": ("部门负责人", "department head"),
}
UNIT_WORDS = {
    "m": ("分钟", "minutes"),
    "h": ("小时", "hours"),
    "wd": ("个工作日", "working days"),
}
TARGET = re.compile(r"^(\d+(?:\.\d+)?)(wd|h|m)$")


class Rendered(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str
    body: str


class TemplateProblem(ValueError):
    """A template that cannot be rendered with this payload (the message cannot be sent)."""


# Each kind rendered at start with these, so a template naming a variable its kind never
# carries fails then (payload builders in `plan.py` always set every key they use).
RESULT_LABELS = {
    "resolved": ("已解决", "resolved"),
    "partially_resolved": ("部分解决", "partially resolved"),
    "unresolved": ("未能解决", "not resolved"),
}
SAMPLES: dict[str, dict[str, Any]] = {
    "customer_acknowledgement": {
        "first_response_due": "2026-05-20T09:00:00+00:00",
        "first_response_target": "4h",
        "customer_token": "sample-token",
    },
    "customer_information_request": {"missing": ["product_model"]},
    "customer_progress": {"text": "已安排工程师上门检修"},
    "customer_result": {
        "result": "resolved",
        "summary": "已退回多收的费用",
        "customer_token": "sample-token",
    },
    "staff_assignment": {"by": "routing", "reason": "least loaded", "previous_owner": None},
    "staff_clock_warning": {"clock": "first_response", "due_at": "2026-05-20T09:00:00+00:00"},
    "staff_clock_breach": {"clock": "resolution", "due_at": "2026-05-20T09:00:00+00:00"},
    "staff_escalation": {"level": 1, "to_role": "supervisor", "reason": "超时", "clock": None},
    "staff_reopened": {"reason": "客户不满意"},
    "staff_callback_overdue": {
        "task_type": "post_complaint",
        "due_at": "2026-05-20T09:00:00+00:00",
        "attempts": 1,
    },
    "customer_callback_appointment": {"due_at": "2026-05-20T09:00:00+00:00"},
    "staff_escalation_request": {"by": "cs-wang", "reason": "需要技术支持", "support_needed": None},
}
COMMON_SAMPLE: dict[str, Any] = {
    "number": "F20260520-0001",
    "category": "logistics",
    "priority": "high",
    "department": "logistics",
    "owner": "log-feng",
    "role": "owner",
}


class Templates:
    def __init__(
        self,
        zone: ZoneInfo,
        categories: Mapping[str, str] | None = None,
        departments: Mapping[str, str] | None = None,
        folder: Path = FOLDER,
    ) -> None:
        self.zone = zone
        self.categories = dict(categories or {})
        self.departments = dict(departments or {})
        self.env = Environment(
            # Plain text (mail bodies, SMS, IM): nothing to escape, and escaping would
            # mangle `<` or `&` in a reason someone typed.
            autoescape=select_autoescape(enabled_extensions=(), default_for_string=False),
            undefined=StrictUndefined,
            keep_trailing_newline=False,
        )
        self.env.filters["local"] = self._local
        self.env.filters["duration"] = self._duration
        self.compiled: dict[tuple[str, str], tuple[Template, Template]] = {}
        for path in sorted(folder.glob("*.yaml")):
            self._load(path)
        self.check()

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.compiled}

    def _load(self, path: Path) -> None:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a mapping of languages expected")
        for language in LANGUAGES:
            entry = raw.get(language)
            if not isinstance(entry, dict) or not {"title", "body"} <= set(entry):
                raise ValueError(f"{path}: `{language}` needs a `title` and a `body`")
            try:
                self.compiled[(path.stem, language)] = (
                    self.env.from_string(str(entry["title"])),
                    self.env.from_string(str(entry["body"])),
                )
            except TemplateError as error:
                raise ValueError(f"{path}: {language}: {error}") from error

    def check(self) -> None:
        """Render every template in every language with sample data; raises what fails."""
        missing = set(SAMPLES) - self.names
        if missing:
            raise ValueError(f"templates missing for {sorted(missing)} in {FOLDER}")
        for name, language in self.compiled:
            sample = {**COMMON_SAMPLE, **SAMPLES.get(name, {})}
            try:
                self.render(name, language, sample)
            except TemplateProblem as error:
                raise ValueError(f"template {name} ({language}): {error}") from error

    def render(self, name: str, language: str, payload: Mapping[str, Any]) -> Rendered:
        found = self.compiled.get((name, language)) or self.compiled.get((name, "zh"))
        if found is None:
            raise TemplateProblem(f"no template {name!r}")
        title, body = found
        context = {**payload, "lang": language, "label": self._labeller(language)}
        try:
            # A title is one line, whatever the data held.
            shown = " ".join(title.render(context).split())
            return Rendered(title=shown, body=body.render(context).strip() + "\n")
        except TemplateError as error:
            raise TemplateProblem(f"{type(error).__name__}: {error}") from error

    def _labeller(self, language: str) -> Any:
        english = language == "en"

        def label(kind: str, code: str | None) -> str:
            if code is None:
                return ""
            pair: tuple[str, str] | None = None
            if kind == "clock":
                pair = CLOCK_LABELS.get(code)
            elif kind == "field":
                pair = FIELD_LABELS.get(code)
            elif kind == "role":
                pair = ROLE_LABELS.get(code)
            elif kind == "callback":
                pair = CALLBACK_LABELS.get(code)
            elif kind == "result":
                pair = RESULT_LABELS.get(code)
            elif kind == "priority" and code in Priority.__members__:
                pair = (PRIORITY_LABELS[Priority(code)], code)
            elif kind == "category" and code in self.categories:
                pair = (self.categories[code], code.replace("_", " "))
            elif kind == "department" and code in self.departments:
                pair = (self.departments[code], code.replace("_", " "))
            if pair is None:
                return code.replace("_", " ")
            return pair[1] if english else pair[0]

        return label

    def _local(self, moment: str | datetime | None) -> str:
        """An instant in the centre's time zone, to the minute."""
        if moment is None:
            return ""
        value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
        return value.astimezone(self.zone).strftime("%Y-%m-%d %H:%M")

    @staticmethod
    @pass_context
    def _duration(context: Context, target: str | None) -> str:
        """`4h` as 4 小时 / 4 hours, `3wd` as 3 个工作日 / 3 working days."""
        if not target:
            return ""
        found = TARGET.match(target)
        if found is None:
            return target
        amount, unit = found.groups()
        zh, en = UNIT_WORDS[unit]
        return f"{amount} {en}" if context.get("lang") == "en" else f"{amount} {zh}"
