"""Evidence store: attachments kept by content hash in a folder; events carry references.

`evidence://sha256/<hex>` names the bytes (the hash of the plaintext); the same attachment
sent twice is stored once. Files are encrypted at rest (AES-256-GCM, a key derived from
the PII key): chat transcripts and photos carry personal data too. An S3-compatible store
can take this class's place behind the same `put` and `open`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contracts.events import Evidence


class EvidenceRefused(ValueError):
    """An attachment outside the configured limits; the message says which."""


class EvidenceStore:
    def __init__(
        self,
        folder: Path,
        max_bytes: int,
        allowed_types: tuple[str, ...],
        max_count: int = 10,
        key: bytes | None = None,
    ) -> None:
        self.folder = folder
        # A key of its own, derived so that evidence and contacts never share one.
        self.cipher = (
            AESGCM(hmac.new(key, b"feedback-evidence", hashlib.sha256).digest()) if key else None
        )
        self.max_bytes = max_bytes
        self.allowed_types = allowed_types
        self.max_count = max_count

    def check(self, filename: str | None, content_type: str | None, size: int) -> None:
        kind = (content_type or "application/octet-stream").split(";")[0].strip().lower()
        if kind not in self.allowed_types:
            raise EvidenceRefused(f"attachment {filename!r}: type {kind} is not accepted")
        if size > self.max_bytes:
            raise EvidenceRefused(
                f"attachment {filename!r}: {size} bytes is over the limit of {self.max_bytes}"
            )

    def put(
        self, data: bytes, filename: str | None, content_type: str | None, kind: str | None = None
    ) -> Evidence:
        self.check(filename, content_type, len(data))
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_of(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a reader never sees half a file.
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
                handle.write(self._seal(digest, data))
                temporary = handle.name
            os.replace(temporary, path)
        media = (content_type or "application/octet-stream").split(";")[0].strip().lower()
        return Evidence(
            kind=kind or _kind_of(media),
            reference=f"evidence://sha256/{digest}",
            sha256=digest,
            filename=(filename or digest)[:200],
            content_type=media,
            size_bytes=len(data),
        )

    def path_of(self, digest: str) -> Path:
        return self.folder / digest[:2] / digest[2:4] / digest

    def open(self, reference: str) -> bytes:
        digest = reference.rsplit("/", 1)[-1]
        stored = self.path_of(digest).read_bytes()
        if self.cipher is None:
            return stored
        return self.cipher.decrypt(stored[:12], stored[12:], digest.encode())

    def _seal(self, digest: str, data: bytes) -> bytes:
        if self.cipher is None:
            return data
        nonce = os.urandom(12)
        return nonce + self.cipher.encrypt(nonce, data, digest.encode())


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
