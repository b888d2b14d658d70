"""Evidence store: attachments kept by content hash; events carry references, never bytes.

`evidence://sha256/<hex>` names the bytes (the hash of the plaintext) wherever they are
kept: in a folder (the default) or in an S3-compatible bucket (`FEEDBACK_EVIDENCE_S3_BUCKET`).
The same attachment sent twice is stored once. Stored bytes are encrypted (AES-256-GCM, a
key derived from the PII key): chat transcripts and photos carry personal data too, and a
bucket's own encryption would leave them readable to anyone with bucket access.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import filetype
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contracts.events import Evidence
from services.common.boundary import excerpt


class EvidenceRefused(ValueError):
    """An attachment outside the configured limits; the message says which."""


class Blobs(Protocol):
    """Where sealed evidence bytes live, by content hash. Calls may block (run in a thread)."""

    def exists(self, digest: str) -> bool: ...

    def write(self, digest: str, sealed: bytes) -> None: ...

    def read(self, digest: str) -> bytes: ...


class FolderBlobs:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path_of(self, digest: str) -> Path:
        return self.folder / digest[:2] / digest[2:4] / digest

    def exists(self, digest: str) -> bool:
        return self.path_of(digest).exists()

    def write(self, digest: str, sealed: bytes) -> None:
        path = self.path_of(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
            handle.write(sealed)
            temporary = handle.name
        os.replace(temporary, path)

    def read(self, digest: str) -> bytes:
        return self.path_of(digest).read_bytes()


class S3Blobs:
    """An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...). Credentials come from the
    standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) or the host role."""

    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str = ""
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def key_of(self, digest: str) -> str:
        return f"{self.prefix}sha256/{digest[:2]}/{digest}"

    def check(self) -> None:
        """Fail at start, not at the first attachment, when the bucket is unreachable."""
        self.client.head_bucket(Bucket=self.bucket)

    def exists(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_of(digest))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def write(self, digest: str, sealed: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key_of(digest),
            Body=sealed,
            ContentType="application/octet-stream",
        )

    def read(self, digest: str) -> bytes:
        response = self.client.get_object(Bucket=self.bucket, Key=self.key_of(digest))
        return bytes(response["Body"].read())


class EvidenceStore:
    def __init__(
        self,
        blobs: Blobs,
        max_bytes: int,
        allowed_types: tuple[str, ...],
        max_count: int = 10,
        key: bytes | None = None,
    ) -> None:
        self.blobs = blobs
        # A key of its own, derived so that evidence and contacts never share one.
        self.cipher = (
            AESGCM(hmac.new(key, b"feedback-evidence", hashlib.sha256).digest()) if key else None
        )
        self.max_bytes = max_bytes
        self.allowed_types = allowed_types
        self.max_count = max_count

    def check(self, filename: str | None, content_type: str | None, data: bytes) -> None:
        name = excerpt(filename, 60)
        kind = (content_type or "application/octet-stream").split(";")[0].strip().lower()
        if kind not in self.allowed_types:
            raise EvidenceRefused(f"attachment {name!r}: type {excerpt(kind, 60)} is not accepted")
        if not data:
            raise EvidenceRefused(f"attachment {name!r} is empty")
        if len(data) > self.max_bytes:
            raise EvidenceRefused(
                f"attachment {name!r}: {len(data)} bytes is over the limit of {self.max_bytes}"
            )
        problem = content_mismatch(kind, data)
        if problem:
            raise EvidenceRefused(f"attachment {name!r}: {problem}")

    async def put(
        self, data: bytes, filename: str | None, content_type: str | None, kind: str | None = None
    ) -> Evidence:
        self.check(filename, content_type, data)
        # Hashing and sealing a 50 MiB upload hold a CPU for a tenth of a second or more:
        # in a worker thread, so the event loop keeps serving meanwhile (hashlib and AES-GCM
        # release the GIL on large buffers).
        digest = await asyncio.to_thread(self._keep, data)
        media = (content_type or "application/octet-stream").split(";")[0].strip().lower()
        return Evidence(
            kind=kind or _kind_of(media),
            reference=f"evidence://sha256/{digest}",
            sha256=digest,
            filename=(filename or digest)[:200],
            content_type=media,
            size_bytes=len(data),
        )

    async def open(self, reference: str) -> bytes:
        digest = reference.rsplit("/", 1)[-1]
        # Reading and opening a large attachment in a thread too, off the event loop.
        return await asyncio.to_thread(self._open, digest)

    def _open(self, digest: str) -> bytes:
        stored = self.blobs.read(digest)
        if self.cipher is None:
            return stored
        return self.cipher.decrypt(stored[:12], stored[12:], digest.encode())

    def _keep(self, data: bytes) -> str:
        """Hash, seal and store (once per content); returns the hash. Runs in a thread."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.blobs.exists(digest):
            self.blobs.write(digest, self._seal(digest, data))
        return digest

    def _seal(self, digest: str, data: bytes) -> bytes:
        if self.cipher is None:
            return data
        nonce = os.urandom(12)
        return nonce + self.cipher.encrypt(nonce, data, digest.encode())


# Content nobody sends as feedback evidence, whatever it is labelled.
REFUSED_CONTENT = frozenset(
    {
        "application/x-executable", "application/x-msdownload", "application/x-mach-binary",
        "application/x-shockwave-flash", "application/x-deb", "application/x-rpm",
        "application/x-google-chrome-extension",
    }
)  # fmt: skip
# Declared types whose bytes must show that type (what a viewer would render).
SNIFFED_FAMILIES = ("image/", "audio/", "application/pdf")


def content_mismatch(declared: str, data: bytes) -> str | None:
    """Why these bytes are not what the sender declared (or not acceptable at all)."""
    guessed = filetype.guess(data[:8192])
    sniffed = guessed.mime if guessed is not None else None
    if sniffed in REFUSED_CONTENT:
        return f"the content is {sniffed}, which is not accepted"
    family = next((f for f in SNIFFED_FAMILIES if declared.startswith(f)), None)
    if family is not None and (sniffed is None or not sniffed.startswith(family)):
        return f"declared {declared} but the content is {sniffed or 'not recognisable as such'}"
    return None


def _kind_of(media: str) -> str:
    if media.startswith("image/"):
        return "image"
    if media.startswith("audio/"):
        return "recording"
    if media == "message/rfc822":
        return "email"
    if media in ("application/pdf", "text/plain"):
        return "document"
    return "other"
