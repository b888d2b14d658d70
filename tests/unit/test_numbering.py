from __future__ import annotations

import re
from datetime import datetime

from contracts.events import CUSTOMER_REF_PATTERN, FEEDBACK_NUMBER_PATTERN
from services.common.masking import mask_contacts
from services.intake.numbering import customer_reference, feedback_number
from services.intake.pii_vault import normalise_phone


def test_feedback_number_is_date_plus_daily_serial() -> None:
    assert feedback_number(datetime(2024, 5, 20, 23, 59), 1) == "F20240520-0001"
    assert feedback_number(datetime(2024, 5, 20), 173) == "F20240520-0173"


def test_serial_grows_past_four_digits_instead_of_wrapping() -> None:
    number = feedback_number(datetime(2024, 5, 20), 12345)
    assert number == "F20240520-12345"
    assert re.match(FEEDBACK_NUMBER_PATTERN, number)


def test_customer_reference_is_pseudonymous() -> None:
    reference = customer_reference(2024, 173)
    assert reference == "客户-2024-0173"
    assert re.match(CUSTOMER_REF_PATTERN, reference)


def test_contacts_written_into_free_text_are_masked() -> None:
    text = "请打13812345678或发邮件到zhang.wei@example.com联系我，订单号20240520001"
    masked = mask_contacts(text)
    assert "13812345678" not in masked and "138****5678" in masked
    assert "zhang.wei@example.com" not in masked and "@example.com" in masked
    assert "20240520001" in masked  # an order number is not a phone number


def test_phone_numbers_normalise_to_the_same_person() -> None:
    assert normalise_phone("+86 138-1234-5678") == normalise_phone("13812345678")
