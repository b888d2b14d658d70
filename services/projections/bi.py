"""The `bi` schema: stable, documented views for BI tools (Metabase, Superset), and the
`bi_reader` role that may read them and nothing else.

Every view and every column carries a `COMMENT` in Chinese and English ("中文 / English");
BI tools show them. No view exposes personal data: no customer reference, no free text
(descriptions, notes, outcomes, reasons), nothing of the PII vault or the event store.

Case-grain views (`cases`, `department_stints`, `clocks`, `callback_tasks`) are the detail
every report is a query over (the reports API filters them by date range and department);
the report views aggregate them by the month (or day, week) the feedback was received, in
the business calendar's zone, which is written into the view definitions at start.

Views run with their owner's rights (the platform's database user; PostgreSQL views are not
`security_invoker` unless asked), so `bi_reader` reads the read models through them without
any privilege on the tables themselves.

The whole schema is replaced in one transaction at every start (`schema()`): a changed view
never meets an old definition, and the views always point at the current read-model tables
(a rebuild's switch of those tables runs `views_statement` again in its transaction).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import psycopg

ROLE = "bi_reader"
SCHEMA_NAME = "bi"
DEFAULT_STATEMENT_TIMEOUT_S = 30
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")


@dataclass(frozen=True)
class View:
    name: str
    comment: str
    sql: str
    columns: tuple[tuple[str, str], ...]


def views(zone: str) -> tuple[View, ...]:
    """The views, in dependency order; `zone` is a quoted SQL literal."""

    def day(column: str) -> str:
        return f"({column} AT TIME ZONE {zone})::date"

    def week(column: str) -> str:
        return f"date_trunc('week', {column} AT TIME ZONE {zone})::date"

    def month(column: str) -> str:
        return f"date_trunc('month', {column} AT TIME ZONE {zone})::date"

    received = (
        ("received_at", "接收时间 / When the feedback was received"),
        ("received_date", "接收日期（日历时区）/ Local date received (calendar zone)"),
    )
    received_month = (
        ("received_month", "接收月份（当月1日）/ Month received (its first day, calendar zone)"),
    )
    month_column = (("month", "接收月份（当月1日）/ Month the feedback was received (first day)"),)
    department = (
        ("department", "责任部门（空=待分诊）/ Responsible department (empty: in triage)"),
    )
    return (
        View(
            "cases",
            "案例事实（每案一行，无个人信息）/ Case facts: one row per case, no personal data",
            f"""
            SELECT f.feedback_number, f.received_at, {day("f.received_at")} AS received_date,
                   {week("f.received_at")} AS received_week,
                   {month("f.received_at")} AS received_month,
                   f.channel, f.feedback_type, f.category, f.subcategory, f.priority,
                   f.department, f.owner, f.customer_tier, f.product_model, f.emotion, f.status,
                   f.first_response_at, f.resolved_at, f.result, f.confirmed_at, f.satisfied,
                   f.closed_at, f.archived_at, f.first_response_business_minutes,
                   f.first_response_calendar_minutes, f.resolution_business_minutes,
                   f.resolution_calendar_minutes, f.csat, f.nps, f.reopened_count, f.repeat,
                   f.escalation_level, f.breached_count
            FROM case_facts f
            """,
            (
                ("feedback_number", "反馈编号 / Feedback number"),
                *received,
                ("received_week", "接收周（周一）/ Week received (its Monday, calendar zone)"),
                *received_month,
                ("channel", "渠道 / Channel"),
                ("feedback_type", "反馈类型（空=未分类）/ Feedback type (empty: not classified)"),
                ("category", "问题类别 / Category"),
                ("subcategory", "问题子类 / Subcategory"),
                ("priority", "优先级 / Priority"),
                *department,
                ("owner", "处理人（坐席编号）/ Owner (agent id)"),
                ("customer_tier", "客户等级 / Customer tier"),
                ("product_model", "产品型号 / Product model"),
                ("emotion", "情绪（分类结果，否则客户自述）/ Emotion (classified, else stated)"),
                ("status", "状态 / Status"),
                ("first_response_at", "首次响应时间 / First response (clock met)"),
                ("resolved_at", "最近处理结果时间 / Latest result given"),
                ("result", "处理结果 / Result (resolved, partially_resolved, unresolved)"),
                ("confirmed_at", "客户确认时间 / Customer confirmed"),
                ("satisfied", "客户是否满意 / Customer satisfied with the result"),
                ("closed_at", "结案时间 / Closed"),
                ("archived_at", "归档时间 / Archived"),
                (
                    "first_response_business_minutes",
                    "首次响应用时（工作分钟）/ Time to first response, business minutes",
                ),
                (
                    "first_response_calendar_minutes",
                    "首次响应用时（自然分钟）/ Time to first response, calendar minutes",
                ),
                (
                    "resolution_business_minutes",
                    "解决用时（工作分钟）/ Time to result, business minutes",
                ),
                (
                    "resolution_calendar_minutes",
                    "解决用时（自然分钟）/ Time to result, calendar minutes",
                ),
                ("csat", "满意度评分 1–5 / CSAT score 1–5"),
                ("nps", "推荐意愿 0–10 / NPS answer 0–10"),
                ("reopened_count", "重开次数 / Times reopened"),
                (
                    "repeat",
                    "是否重复反馈 / Repeat (related feedback or same customer within 30 days)",
                ),
                ("escalation_level", "升级级别 / Escalation level"),
                ("breached_count", "超时时钟数 / Clocks breached"),
            ),
        ),
        View(
            "department_stints",
            "部门停留段（案例在每个部门的时段）/ Department stints: each department a case was in",
            f"""
            SELECT f.feedback_number, s.seq, s.department, s.moved_in_at, s.moved_out_at,
                   f.received_at, {day("f.received_at")} AS received_date,
                   {month("f.received_at")} AS received_month,
                   s.business_minutes, s.calendar_minutes
            FROM department_stints s JOIN case_facts f USING (feedback_id)
            """,
            (
                ("feedback_number", "反馈编号 / Feedback number"),
                ("seq", "序号 / Sequence within the case"),
                ("department", "部门 / Department"),
                ("moved_in_at", "转入时间 / Moved in"),
                ("moved_out_at", "转出时间（空=仍在该部门）/ Moved out (empty: still there)"),
                *received,
                *received_month,
                ("business_minutes", "停留时长（工作分钟）/ Time there, business minutes"),
                ("calendar_minutes", "停留时长（自然分钟）/ Time there, calendar minutes"),
            ),
        ),
        View(
            "clocks",
            "时限时钟（每案每个承诺一行）/ Deadline clocks: one row per promise of a case",
            f"""
            SELECT f.feedback_number, f.received_at, {day("f.received_at")} AS received_date,
                   {month("f.received_at")} AS received_month, f.department, f.owner,
                   f.priority, f.status AS case_status, f.escalation_level, c.clock, c.subject,
                   c.time, c.target, c.started_at, c.due_at, c.state, c.paused_at, c.warned,
                   c.breached, c.met_at, c.late,
                   CASE WHEN c.state = 'met' THEN NOT coalesce(c.late, false)
                        WHEN c.breached THEN false END AS on_time,
                   (c.state <> 'met' AND c.due_at < now()
                    AND (c.state <> 'paused' OR c.paused_at >= c.due_at)
                    AND f.status NOT IN ('closed', 'archived')) AS overdue
            FROM case_clocks c JOIN case_facts f USING (feedback_id)
            """,
            (
                ("feedback_number", "反馈编号 / Feedback number"),
                *received,
                *received_month,
                *department,
                ("owner", "处理人 / Owner"),
                ("priority", "优先级 / Priority"),
                ("case_status", "案例状态 / Case status"),
                ("escalation_level", "升级级别 / Escalation level"),
                ("clock", "时钟 / Clock (first_response, resolution, ...)"),
                ("subject", "对象（如协办部门）/ Subject (e.g. the co-handling department)"),
                ("time", "计时方式 / Time counted: business or calendar"),
                ("target", "时限 / Target (4h, 3wd, ...)"),
                ("started_at", "开始时间 / Started"),
                ("due_at", "到期时间 / Due"),
                ("state", "状态 / State: running, paused, met"),
                ("paused_at", "暂停时间（等待客户）/ Paused since (waiting for the customer)"),
                ("warned", "是否预警 / Warned"),
                ("breached", "是否超时 / Breached"),
                ("met_at", "达成时间 / Met"),
                ("late", "达成时是否已超时 / Met late"),
                (
                    "on_time",
                    "按时（空=未判定）/ On time: met and not late; false: late or breached; "
                    "empty: undecided",
                ),
                (
                    "overdue",
                    "当前是否逾期 / Overdue now: not met, past due, case not closed",
                ),
            ),
        ),
        View(
            "callback_tasks",
            "回访任务（无客户信息）/ Callback tasks, without the customer",
            f"""
            SELECT t.type, t.feedback_number, t.department, t.priority, t.window_from,
                   t.due_at, {day("t.due_at")} AS due_date, {month("t.due_at")} AS due_month,
                   t.state, t.attempts, t.satisfaction, t.created_at, t.done_at,
                   (t.state = 'done' AND t.done_at <= t.due_at) AS done_on_time,
                   (t.state <> 'done' AND t.due_at < now()) AS overdue
            FROM callback_tasks t
            """,
            (
                ("type", "回访类型 / Callback type"),
                ("feedback_number", "反馈编号（如有）/ Feedback number, if any"),
                ("department", "部门 / Department"),
                ("priority", "是否优先 / Comes first"),
                ("window_from", "最早回访时间 / Not before"),
                ("due_at", "到期时间 / Due"),
                ("due_date", "到期日期 / Local date due"),
                ("due_month", "到期月份（当月1日）/ Month due (its first day)"),
                ("state", "状态 / State: open, done, rescheduled"),
                ("attempts", "尝试次数 / Attempts"),
                ("satisfaction", "回访满意度 / Satisfaction given in the callback"),
                ("created_at", "创建时间 / Created"),
                ("done_at", "完成时间 / Done"),
                ("done_on_time", "是否按时完成 / Done by its due time"),
                ("overdue", "是否逾期未完成 / Not done and past due"),
            ),
        ),
        *_volume_views(),
        View(
            "category_mix",
            "问题类别分布（按月）/ Category mix by month",
            """
            SELECT received_month AS month, department, feedback_type, category, subcategory,
                   count(*) AS cases,
                   round(count(*)::numeric / sum(count(*)) OVER (PARTITION BY received_month), 4)
                       AS share
            FROM bi.cases GROUP BY 1, 2, 3, 4, 5
            """,
            (
                *month_column,
                *department,
                ("feedback_type", "反馈类型 / Feedback type"),
                ("category", "问题类别 / Category"),
                ("subcategory", "问题子类 / Subcategory"),
                ("cases", "反馈量 / Feedback received"),
                ("share", "占当月反馈比例 / Share of the month's feedback"),
            ),
        ),
        View(
            "department_handling_times",
            "部门处理时长中位数与P90（按接收月份）/ Department handling time, median and p90",
            """
            SELECT received_month AS month, department, count(*) AS stints,
                   count(moved_out_at) AS finished,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY business_minutes)
                       AS median_business_minutes,
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY business_minutes)
                       AS p90_business_minutes,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY calendar_minutes)
                       AS median_calendar_minutes,
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY calendar_minutes)
                       AS p90_calendar_minutes
            FROM bi.department_stints GROUP BY 1, 2
            """,
            (
                *month_column,
                ("department", "部门 / Department"),
                ("stints", "停留段数 / Stints"),
                ("finished", "已转出段数 / Stints finished"),
                ("median_business_minutes", "中位数（工作分钟）/ Median, business minutes"),
                ("p90_business_minutes", "P90（工作分钟）/ 90th percentile, business minutes"),
                ("median_calendar_minutes", "中位数（自然分钟）/ Median, calendar minutes"),
                ("p90_calendar_minutes", "P90（自然分钟）/ 90th percentile, calendar minutes"),
            ),
        ),
        View(
            "response_times",
            "首次响应与解决时长（按月、部门）/ First-response and resolution times by month",
            """
            SELECT received_month AS month, department, count(*) AS cases,
                   count(first_response_at) AS responded,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY first_response_business_minutes)
                       AS first_response_median_business_minutes,
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY first_response_business_minutes)
                       AS first_response_p90_business_minutes,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY first_response_calendar_minutes)
                       AS first_response_median_calendar_minutes,
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY first_response_calendar_minutes)
                       AS first_response_p90_calendar_minutes,
                   count(resolved_at) AS resolved,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution_business_minutes)
                       AS resolution_median_business_minutes,
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY resolution_business_minutes)
                       AS resolution_p90_business_minutes,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution_calendar_minutes)
                       AS resolution_median_calendar_minutes,
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY resolution_calendar_minutes)
                       AS resolution_p90_calendar_minutes
            FROM bi.cases GROUP BY 1, 2
            """,
            (
                *month_column,
                *department,
                ("cases", "反馈量 / Feedback received"),
                ("responded", "已首次响应 / Cases with a first response"),
                (
                    "first_response_median_business_minutes",
                    "首次响应中位数（工作分钟）/ First response median, business minutes",
                ),
                (
                    "first_response_p90_business_minutes",
                    "首次响应P90（工作分钟）/ First response p90, business minutes",
                ),
                (
                    "first_response_median_calendar_minutes",
                    "首次响应中位数（自然分钟）/ First response median, calendar minutes",
                ),
                (
                    "first_response_p90_calendar_minutes",
                    "首次响应P90（自然分钟）/ First response p90, calendar minutes",
                ),
                ("resolved", "已给出处理结果 / Cases with a result"),
                (
                    "resolution_median_business_minutes",
                    "解决用时中位数（工作分钟）/ Resolution median, business minutes",
                ),
                (
                    "resolution_p90_business_minutes",
                    "解决用时P90（工作分钟）/ Resolution p90, business minutes",
                ),
                (
                    "resolution_median_calendar_minutes",
                    "解决用时中位数（自然分钟）/ Resolution median, calendar minutes",
                ),
                (
                    "resolution_p90_calendar_minutes",
                    "解决用时P90（自然分钟）/ Resolution p90, calendar minutes",
                ),
            ),
        ),
        View(
            "on_time_rate",
            "时限达成率（按时达成 ÷ 已达成或已超时）/ On-time rate: met on time ÷ (met or breached)",
            """
            SELECT received_month AS month, department, clock,
                   count(on_time) AS decided,
                   count(*) FILTER (WHERE on_time) AS on_time,
                   count(*) FILTER (WHERE NOT on_time) AS late,
                   round(count(*) FILTER (WHERE on_time)::numeric / NULLIF(count(on_time), 0), 4)
                       AS on_time_rate
            FROM bi.clocks GROUP BY 1, 2, 3
            """,
            (
                *month_column,
                *department,
                ("clock", "时钟 / Clock"),
                ("decided", "已判定（已达成或已超时）/ Decided: met or breached"),
                ("on_time", "按时达成 / Met on time"),
                ("late", "超时（迟达成或已超时）/ Late: met late or breached"),
                ("on_time_rate", "按时率（0–1）/ On-time rate (0–1)"),
            ),
        ),
        View(
            "overdue_cases",
            "当前逾期案例（未达成且已过期的时钟）/ Overdue now: open clocks past their due time",
            """
            SELECT feedback_number, received_date, department, owner, priority, case_status,
                   escalation_level, clock, subject, due_at,
                   round((extract(epoch FROM now() - due_at) / 60)::numeric, 1)
                       AS overdue_minutes
            FROM bi.clocks WHERE overdue
            """,
            (
                ("feedback_number", "反馈编号 / Feedback number"),
                ("received_date", "接收日期 / Local date received"),
                *department,
                ("owner", "处理人 / Owner"),
                ("priority", "优先级 / Priority"),
                ("case_status", "案例状态 / Case status"),
                ("escalation_level", "升级级别 / Escalation level"),
                ("clock", "时钟 / Clock"),
                ("subject", "对象 / Subject"),
                ("due_at", "到期时间 / Due"),
                ("overdue_minutes", "已逾期（自然分钟）/ Overdue by, calendar minutes"),
            ),
        ),
        View(
            "satisfaction",
            "满意度：4–5分占比 / CSAT: share of scores 4–5",
            """
            SELECT received_month AS month, department, count(csat) AS rated,
                   count(*) FILTER (WHERE csat >= 4) AS score_4_5,
                   round(count(*) FILTER (WHERE csat >= 4)::numeric / NULLIF(count(csat), 0), 4)
                       AS share_4_5,
                   round(avg(csat), 2) AS average_csat,
                   count(satisfied) AS confirmed,
                   count(*) FILTER (WHERE satisfied) AS confirmed_satisfied
            FROM bi.cases GROUP BY 1, 2
            """,
            (
                *month_column,
                *department,
                ("rated", "评价数 / Cases rated"),
                ("score_4_5", "4–5分数量 / Scores 4–5"),
                ("share_4_5", "4–5分占比 / Share of scores 4–5 (CSAT)"),
                ("average_csat", "平均分 / Average score"),
                ("confirmed", "客户确认数 / Results the customer confirmed or rejected"),
                ("confirmed_satisfied", "确认满意数 / Confirmed satisfied"),
            ),
        ),
        View(
            "nps",
            "净推荐值：9–10分占比减0–6分占比 / NPS: % 9–10 minus % 0–6",
            """
            SELECT received_month AS month, department, count(nps) AS answered,
                   count(*) FILTER (WHERE nps >= 9) AS promoters,
                   count(*) FILTER (WHERE nps BETWEEN 7 AND 8) AS passives,
                   count(*) FILTER (WHERE nps <= 6) AS detractors,
                   round(100.0 * (count(*) FILTER (WHERE nps >= 9)
                                  - count(*) FILTER (WHERE nps <= 6)) / NULLIF(count(nps), 0), 1)
                       AS nps
            FROM bi.cases GROUP BY 1, 2
            """,
            (
                *month_column,
                *department,
                ("answered", "回答数 / Answers"),
                ("promoters", "推荐者（9–10）/ Promoters (9–10)"),
                ("passives", "中立者（7–8）/ Passives (7–8)"),
                ("detractors", "贬损者（0–6）/ Detractors (0–6)"),
                ("nps", "净推荐值（−100至100）/ NPS (−100 to 100)"),
            ),
        ),
        View(
            "repeat_complaints",
            "重复投诉率 / Repeat-complaint rate",
            """
            SELECT received_month AS month, department, count(*) AS cases,
                   count(*) FILTER (WHERE repeat) AS repeat_cases,
                   count(*) FILTER (WHERE feedback_type = 'complaint') AS complaints,
                   count(*) FILTER (WHERE feedback_type = 'complaint' AND repeat)
                       AS repeat_complaints,
                   round(count(*) FILTER (WHERE feedback_type = 'complaint' AND repeat)::numeric
                         / NULLIF(count(*) FILTER (WHERE feedback_type = 'complaint'), 0), 4)
                       AS repeat_complaint_rate
            FROM bi.cases GROUP BY 1, 2
            """,
            (
                *month_column,
                *department,
                ("cases", "反馈量 / Feedback received"),
                ("repeat_cases", "重复反馈 / Repeat feedback"),
                ("complaints", "投诉量 / Complaints"),
                ("repeat_complaints", "重复投诉 / Repeat complaints"),
                ("repeat_complaint_rate", "重复投诉率（0–1）/ Repeat-complaint rate (0–1)"),
            ),
        ),
        View(
            "product_problems",
            "高频问题：产品型号×问题类别，含型号占比 / Top problems by product model, with each "
            "model's share (feedback naming a model, other than praise and suggestions)",
            """
            WITH problems AS (
                SELECT received_month AS month, product_model, category, count(*) AS cases
                FROM bi.cases
                WHERE product_model IS NOT NULL
                  AND coalesce(feedback_type, '') NOT IN ('praise', 'suggestion')
                GROUP BY 1, 2, 3
            ), models AS (
                SELECT *, sum(cases) OVER (PARTITION BY month, product_model) AS model_cases,
                       sum(cases) OVER (PARTITION BY month) AS month_cases
                FROM problems
            )
            SELECT month, product_model, model_cases::bigint AS model_cases,
                   round(model_cases / month_cases, 4) AS model_share,
                   dense_rank() OVER (PARTITION BY month ORDER BY model_cases DESC, product_model)
                       AS model_rank,
                   category, cases, round(cases / model_cases, 4) AS share_in_model
            FROM models
            """,
            (
                *month_column,
                ("product_model", "产品型号 / Product model"),
                ("model_cases", "该型号问题量 / Problems naming this model"),
                ("model_share", "型号占比 / The model's share of the month's problems"),
                ("model_rank", "型号排名 / Rank of the model by problems"),
                ("category", "问题类别 / Category"),
                ("cases", "问题量 / Problems of this category"),
                ("share_in_model", "型号内占比 / Share within the model"),
            ),
        ),
        View(
            "unsatisfied_cases",
            "不满意案例（客户确认不满意或评分≤2）/ Unsatisfied: result rejected or CSAT ≤ 2",
            """
            SELECT feedback_number, received_at, received_date, received_month, department, owner,
                   feedback_type, category, subcategory, product_model, result, satisfied,
                   csat, nps, reopened_count, status
            FROM bi.cases WHERE satisfied = false OR csat <= 2
            """,
            (
                ("feedback_number", "反馈编号 / Feedback number"),
                *received,
                *received_month,
                *department,
                ("owner", "处理人 / Owner"),
                ("feedback_type", "反馈类型 / Feedback type"),
                ("category", "问题类别 / Category"),
                ("subcategory", "问题子类 / Subcategory"),
                ("product_model", "产品型号 / Product model"),
                ("result", "处理结果 / Result"),
                ("satisfied", "客户是否满意 / Customer satisfied"),
                ("csat", "满意度评分 / CSAT score"),
                ("nps", "推荐意愿 / NPS answer"),
                ("reopened_count", "重开次数 / Times reopened"),
                ("status", "状态 / Status"),
            ),
        ),
        View(
            "emotion_mix",
            "情绪分布（按月）/ Emotion mix by month",
            """
            SELECT received_month AS month, department, emotion, count(*) AS cases
            FROM bi.cases GROUP BY 1, 2, 3
            """,
            (
                *month_column,
                *department,
                ("emotion", "情绪 / Emotion"),
                ("cases", "反馈量 / Feedback received"),
            ),
        ),
        View(
            "callback_completion",
            "回访完成率（按到期月份）/ Callback completion by the month tasks fall due",
            """
            SELECT due_month AS month, department, type, count(*) AS tasks,
                   count(*) FILTER (WHERE state = 'done') AS done,
                   count(*) FILTER (WHERE done_on_time) AS done_on_time,
                   count(*) FILTER (WHERE overdue) AS overdue,
                   round(count(*) FILTER (WHERE state = 'done')::numeric / count(*), 4)
                       AS completion_rate,
                   round(count(*) FILTER (WHERE done_on_time)::numeric / count(*), 4)
                       AS on_time_rate
            FROM bi.callback_tasks GROUP BY 1, 2, 3
            """,
            (
                ("month", "到期月份（当月1日）/ Month due (its first day)"),
                ("department", "部门 / Department"),
                ("type", "回访类型 / Callback type"),
                ("tasks", "任务数 / Tasks"),
                ("done", "已完成 / Done"),
                ("done_on_time", "按时完成 / Done on time"),
                ("overdue", "逾期未完成 / Overdue, not done"),
                ("completion_rate", "完成率（0–1）/ Completion rate (0–1)"),
                ("on_time_rate", "按时完成率（0–1）/ Done on time ÷ tasks (0–1)"),
            ),
        ),
    )


def _volume_views() -> tuple[View, ...]:
    made = []
    for name, column, label, comment in (
        ("volume_by_day", "received_date", "day", "日期 / Local date"),
        ("volume_by_week", "received_week", "week", "周（周一）/ Week (its Monday)"),
        ("volume_by_month", "received_month", "month", "月份（当月1日）/ Month (its first day)"),
    ):
        made.append(
            View(
                name,
                f"反馈量（按{comment.split(' / ')[0]}、渠道、类型、部门）/ Feedback received by "
                f"{label}, channel, type and department",
                f"""
                SELECT {column} AS {label}, channel, feedback_type, department,
                       count(*) AS cases
                FROM bi.cases GROUP BY 1, 2, 3, 4
                """,
                (
                    (label, comment),
                    ("channel", "渠道 / Channel"),
                    (
                        "feedback_type",
                        "反馈类型（空=未分类）/ Feedback type (empty: not classified)",
                    ),
                    ("department", "责任部门（空=待分诊）/ Responsible department (empty: triage)"),
                    ("cases", "反馈量 / Feedback received"),
                ),
            )
        )
    return tuple(made)


def zone_literal(zone: str) -> str:
    """A time zone name as a SQL literal, checked (it is written into view definitions)."""
    ZoneInfo(zone)  # raises for an unknown zone
    if not _ZONE_NAME.fullmatch(zone):
        raise ValueError(f"unexpected characters in time zone {zone!r}")
    return f"'{zone}'"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def views_statement(zone: str) -> str:
    """One multi-statement string (one transaction) that replaces the `bi` schema: its
    views over the current read-model tables, their comments and `bi_reader`'s SELECT.
    Run again after the tables are replaced (a rebuild), or the views follow the old ones."""
    statements = ["DROP SCHEMA IF EXISTS bi CASCADE", "CREATE SCHEMA bi"]
    statements.append(
        "COMMENT ON SCHEMA bi IS "
        + _quote(
            "报表视图（只读，无个人信息）/ Report views for BI tools: read-only, no personal data"
        )
    )
    for view in views(zone_literal(zone)):
        statements.append(f"CREATE VIEW bi.{view.name} AS {view.sql.strip()}")
        statements.append(f"COMMENT ON VIEW bi.{view.name} IS {_quote(view.comment)}")
        for column, comment in view.columns:
            statements.append(f"COMMENT ON COLUMN bi.{view.name}.{column} IS {_quote(comment)}")
    statements += [
        "REVOKE ALL ON SCHEMA bi FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA bi TO {ROLE}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA bi TO {ROLE}",
    ]
    return ";\n".join(statements)


def schema(zone: str, statement_timeout_s: int = DEFAULT_STATEMENT_TIMEOUT_S) -> list[str]:
    """The statements that create the `bi_reader` role (without LOGIN: `enable_login` gives
    it a password when one is configured), set its defaults, keep it out of everything
    else, and (re)create the `bi` schema."""
    if not 1 <= statement_timeout_s <= 3600:
        raise ValueError("the BI statement timeout must be 1 to 3600 seconds")
    return [
        # The role is cluster-wide: another database of the cluster may create it at the
        # same moment.
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
                CREATE ROLE {ROLE} NOLOGIN;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END
        $$
        """,
        f"ALTER ROLE {ROLE} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
        f"ALTER ROLE {ROLE} SET default_transaction_read_only = on",
        f"ALTER ROLE {ROLE} SET statement_timeout = '{statement_timeout_s}s'",
        f"ALTER ROLE {ROLE} SET search_path = bi",
        # Nothing outside `bi`: no table or sequence of the platform's own schema (explicit
        # grants to the role or to PUBLIC), no objects of its own.
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}, PUBLIC",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ROLE}, PUBLIC",
        f"REVOKE CREATE ON SCHEMA public FROM {ROLE}, PUBLIC",
        views_statement(zone),
    ]


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier (RFC 5802/7677) as PostgreSQL stores it: the password itself
    never reaches the server, its logs or `pg_stat_statements`."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    salt64, stored64, server64 = (
        base64.b64encode(raw).decode("ascii") for raw in (salt, stored_key, server_key)
    )
    return f"SCRAM-SHA-256${iterations}:{salt64}${stored64}:{server64}"


def enable_login(database_url: str, password: str) -> None:
    """Let `bi_reader` sign in with this password (from FEEDBACK_BI_READER_PASSWORD; there
    is no default). Without one the role stays NOLOGIN."""
    if len(password) < 12:
        raise ValueError("FEEDBACK_BI_READER_PASSWORD must have at least 12 characters")
    verifier = scram_verifier(password)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # ALTER ROLE takes no parameters; the verifier is base64 and `$`/`:` only.
        conn.execute(f"ALTER ROLE {ROLE} LOGIN PASSWORD {_quote(verifier)}".encode())
