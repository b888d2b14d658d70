"""Free-text masking (issue #10): whatever form a customer writes a number or an address
in, what intake passes on does not contain it. Hypothesis writes the forms."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from services.common.masking import Personal, mask_contacts

FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
SEPARATORS = st.sampled_from(["", " ", "-", "－", "　"])
WORDS = st.sampled_from(["", "我的电话是", "请打", "，谢谢", "联系我：", "急！", "型号A1 "])


def digits_of(text: str) -> str:
    """The text as a reader of digits sees it: full-width digits as ASCII, separators gone."""
    ascii_text = text.translate(str.maketrans("０１２３４５６７８９", "0123456789"))
    return re.sub(r"(?<=\d)[ \-－　.]+(?=\d)", "", ascii_text)


@st.composite
def mobiles(draw: st.DrawFn) -> tuple[str, str]:
    number = draw(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True))
    first, second = draw(SEPARATORS), draw(SEPARATORS)
    written = f"{number[:3]}{first}{number[3:7]}{second}{number[7:]}"
    prefix = draw(st.sampled_from(["", "+86", "+86 ", "0086", "0086-", "86"]))
    written = prefix + written
    if draw(st.booleans()):
        written = written.translate(FULL_WIDTH)
    return number, written


@given(mobile=mobiles(), before=WORDS, after=WORDS)
def test_mobiles_in_any_form_are_masked(mobile: tuple[str, str], before: str, after: str) -> None:
    number, written = mobile
    masked = mask_contacts(f"{before}{written}{after}")
    assert number not in digits_of(masked)
    assert "****" in masked and number[-4:] in digits_of(masked)  # the usual 138****5678


@given(
    area=st.sampled_from(["010", "021", "0755", "0571"]),
    local=st.from_regex(r"[2-8][0-9]{6,7}", fullmatch=True),
    separator=st.sampled_from(["-", " ", ""]),
    brackets=st.booleans(),
)
def test_landlines_are_masked(area: str, local: str, separator: str, brackets: bool) -> None:
    written = f"({area}){local}" if brackets else f"{area}{separator}{local}"
    masked = mask_contacts(f"座机{written}找王经理")
    assert local not in digits_of(masked)


@given(
    user=st.from_regex(r"[a-z][a-z0-9._]{1,15}", fullmatch=True),
    domain=st.sampled_from(["example.com", "qq.com", "163.com", "mail.company.cn"]),
    around=st.sampled_from(["", " ", "  "]),
    at=st.sampled_from(["@", "＠"]),
)
def test_email_addresses_are_masked_even_with_spaces_around_the_at(
    user: str, domain: str, around: str, at: str
) -> None:
    masked = mask_contacts(f"邮箱：{user}{around}{at}{around}{domain} 请回复")
    assert masked == f"邮箱：{user[0]}***@{domain} 请回复"


@given(
    card=st.from_regex(r"62[0-9]{14,17}", fullmatch=True),
    grouped=st.booleans(),
)
def test_bank_cards_are_masked(card: str, grouped: bool) -> None:
    written = " ".join(card[i : i + 4] for i in range(0, len(card), 4)) if grouped else card
    masked = mask_contacts(f"退款请打到卡号{written}")
    assert card[4:-4] not in digits_of(masked)


@given(id_card=st.from_regex(r"[1-6][0-9]{16}[0-9X]", fullmatch=True))
def test_id_card_numbers_are_masked(id_card: str) -> None:
    masked = mask_contacts(f"身份证号{id_card}，请核实")
    assert id_card[6:14] not in digits_of(masked)


def test_the_customers_own_name_and_address_are_masked_where_they_appear() -> None:
    own = Personal(name="欧阳娜娜", address="上海市浦东新区世纪大道100号")
    text = "我是欧阳娜娜，地址上海市浦东新区世纪大道100号，冰箱坏了"
    masked = mask_contacts(text, own)
    assert "欧阳娜娜" not in masked and "世纪大道100号" not in masked
    assert "冰箱坏了" in masked


def test_what_is_not_personal_stays() -> None:
    text = "订单号20240520001，买了2台，价格3999元，型号BCD-500，2024-05-20到货"
    assert mask_contacts(text) == text


def test_a_case_contact_is_masked_by_its_structure_whatever_its_script() -> None:
    """Internationalised addresses (which free-text patterns miss) and phones written with
    a country code, spaces or full-width digits are masked like any other."""
    from services.intake.pii_vault import Contact
    from services.routing.http import MaskedContact

    shown = [
        MaskedContact.of(Contact(email="张三@qq.com", phone="+86 138 1234 5678")),
        MaskedContact.of(Contact(email="zhang@例子.中国", phone="１３８１２３４５６７８")),
        MaskedContact.of(Contact(email="li.si@example.com", phone="138-1234 5678")),
    ]
    assert [c.email for c in shown] == ["张***@qq.com", "z***@例子.中国", "l***@example.com"]
    assert {c.phone for c in shown} == {"138****5678"}
