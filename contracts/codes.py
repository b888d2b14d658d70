"""Canonical machine codes with the Chinese labels users see."""

from enum import StrEnum


class Channel(StrEnum):
    phone = "phone"
    email = "email"
    web_chat = "web_chat"
    web_form = "web_form"
    wechat = "wechat"
    weibo = "weibo"
    douyin = "douyin"
    store = "store"
    letter = "letter"
    callback = "callback"


CHANNEL_LABELS: dict[Channel, str] = {
    Channel.phone: "电话",
    Channel.email: "邮件",
    Channel.web_chat: "在线客服",
    Channel.web_form: "网站/APP",
    Channel.wechat: "公众号",
    Channel.weibo: "微博",
    Channel.douyin: "抖音",
    Channel.store: "线下门店",
    Channel.letter: "书面/信件",
    Channel.callback: "回访",
}

# Channels whose feedback arrives in writing and must be registered within 2 hours.
WRITTEN_CHANNELS: frozenset[Channel] = frozenset(
    {
        Channel.email,
        Channel.web_chat,
        Channel.web_form,
        Channel.wechat,
        Channel.weibo,
        Channel.douyin,
        Channel.store,
        Channel.letter,
    }
)


class FeedbackType(StrEnum):
    inquiry = "inquiry"
    complaint = "complaint"
    suggestion = "suggestion"
    praise = "praise"
    help = "help"


FEEDBACK_TYPE_LABELS: dict[FeedbackType, str] = {
    FeedbackType.inquiry: "咨询",
    FeedbackType.complaint: "投诉",
    FeedbackType.suggestion: "建议",
    FeedbackType.praise: "表扬",
    FeedbackType.help: "求助",
}


class Emotion(StrEnum):
    calm = "calm"
    dissatisfied = "dissatisfied"
    anxious = "anxious"
    angry = "angry"


EMOTION_LABELS: dict[Emotion, str] = {
    Emotion.calm: "平静",
    Emotion.dissatisfied: "不满",
    Emotion.anxious: "焦虑",
    Emotion.angry: "愤怒",
}


class Priority(StrEnum):
    urgent = "urgent"
    high = "high"
    medium = "medium"
    low = "low"


PRIORITY_LABELS: dict[Priority, str] = {
    Priority.urgent: "紧急",
    Priority.high: "高",
    Priority.medium: "中",
    Priority.low: "低",
}

# Customer tiers are configuration (`vip`, `normal` by default); this is their shape.
CUSTOMER_TIER_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
DEFAULT_CUSTOMER_TIERS: tuple[str, ...] = ("vip", "normal")
