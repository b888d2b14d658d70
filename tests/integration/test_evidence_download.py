"""A case's attachments open for the people who handle it (#14: the case page's evidence):
the bytes as received, as a download, recorded in the access log; refused to another
department, to quality (a photo may show a phone number) and for a digest not the case's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from services.common.settings import Settings
from tests.conftest import registered_row, serve, web_form

pytestmark = pytest.mark.integration


async def test_attachments_open_for_handlers_only_and_each_opening_is_logged(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"evidence_dir": tmp_path / "evidence"})
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    async with serve(settings) as running:
        client = running.client
        answer = await client.post(
            "/v1/feedback/multipart",
            data={"feedback": json.dumps(web_form("洗衣机外壳有明显划痕", product_model="W10"))},
            files=[("attachments", ("划痕 照片.png", photo, "image/png"))],
        )
        assert answer.status_code == 202, answer.text
        number = answer.json()["feedback_number"]
        row = await registered_row(client, number, status="assigned")
        digest = hashlib.sha256(photo).hexdigest()
        path = f"/v1/cases/{number}/evidence/{digest}"
        owner = running.as_staff("agent", (row["department"],), row["owner"])

        got = await client.get(path, headers=owner)
        assert got.status_code == 200, got.text
        assert got.content == photo
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.headers["content-disposition"].startswith("attachment;")
        assert got.headers["x-content-type-options"] == "nosniff"

        other = "finance" if row["department"] != "finance" else "logistics"
        stranger = running.as_staff("agent", (other,), "fin-x")
        assert (await client.get(path, headers=stranger)).status_code == 403
        assert (await client.get(path, headers=running.as_staff("quality"))).status_code == 403
        missing = f"/v1/cases/{number}/evidence/{'0' * 64}"
        assert (await client.get(missing, headers=owner)).status_code == 404
        assert (
            await client.get(f"/v1/cases/{number}/evidence/x", headers=owner)
        ).status_code == 422

        log = (await client.get("/v1/audit/pii-access")).json()
        opened = [r for r in log if r["action"] == "evidence" and r["feedback_number"] == number]
        assert len(opened) == 1 and opened[0]["actor"] == row["owner"]
