"""Evidence in an S3-compatible bucket: the same references and hashes as the folder store,
the bytes encrypted in the bucket, the bucket reached over HTTP with signed requests.

The bucket is moto's S3 server (a real HTTP server speaking the S3 REST API with SigV4);
MinIO's server is AGPL and nothing else S3-compatible can be installed here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from services.common.settings import Settings
from services.intake.evidence import S3Blobs
from tests.conftest import free_port, registered_row, serve, web_form

pytestmark = pytest.mark.integration
BUCKET = "feedback-evidence"


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "evidence-writer")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "evidence-secret")
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


async def test_attachments_go_to_the_bucket_encrypted(settings: Settings, s3_endpoint: str) -> None:
    settings = settings.model_copy(
        update={"evidence_s3_bucket": BUCKET, "evidence_s3_endpoint_url": s3_endpoint}
    )
    async with serve(settings) as running:
        photo = b"\xff\xd8\xff\xe0JFIF" + bytes(range(256)) * 20
        response = await running.client.post(
            "/v1/feedback/multipart",
            data={"feedback": json.dumps(web_form("冰箱门把手断了", product_model="冰箱 R5"))},
            files=[
                ("attachments", ("handle.jpg", photo, "image/jpeg")),
                ("attachments", ("again.jpg", photo, "image/jpeg")),
            ],
        )
        assert response.status_code == 202, response.text
        row = await registered_row(running.client, response.json()["feedback_number"])
        digest = hashlib.sha256(photo).hexdigest()
        assert [e["reference"] for e in row["evidence"]] == [f"evidence://sha256/{digest}"] * 2

        store = running.platform.evidence
        assert store is not None and isinstance(store.blobs, S3Blobs)
        assert await store.open(f"evidence://sha256/{digest}") == photo
        bucket = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        listed = bucket.list_objects_v2(Bucket=BUCKET)["Contents"]
        assert [o["Key"] for o in listed] == [f"evidence/sha256/{digest[:2]}/{digest}"]  # once
        stored = bucket.get_object(Bucket=BUCKET, Key=listed[0]["Key"])["Body"].read()
        assert photo not in stored and len(stored) == len(photo) + 12 + 16


async def test_an_unreachable_bucket_stops_intake_at_start(
    settings: Settings, s3_endpoint: str
) -> None:
    settings = settings.model_copy(
        update={"evidence_s3_bucket": "no-such-bucket", "evidence_s3_endpoint_url": s3_endpoint}
    )
    from botocore.exceptions import ClientError

    from services.runtime import Platform

    platform = Platform(settings, ("intake",))
    platform.build()
    with pytest.raises(ClientError):
        await platform.start()
    await platform.stop()
