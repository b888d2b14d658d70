"""WeChat Official Account safe mode (安全模式): pushes arrive encrypted with the account's
EncodingAESKey and signed over the ciphertext (`msg_signature`).

The protocol (WeChat's "message encryption" description, as its WXBizMsgCrypt samples do):
- AES key = base64 of the 43-character EncodingAESKey plus "="; AES-256-CBC with the first
  16 key bytes as IV; PKCS#7 padding to 32-byte blocks;
- plaintext = 16 random bytes + 4-byte big-endian message length + message XML + AppID;
- msg_signature = SHA-1 of token, timestamp, nonce and the base64 ciphertext, sorted and
  joined.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32


class WeChatCryptoError(ValueError):
    pass


def msg_signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    joined = "".join(sorted([token, timestamp, nonce, encrypted]))
    return hashlib.sha1(joined.encode()).hexdigest()  # noqa: S324 (WeChat's protocol)


class WeChatCrypto:
    def __init__(self, token: str, encoding_aes_key: str, app_id: str) -> None:
        try:
            self.key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except ValueError as error:
            raise ValueError("the EncodingAESKey is not 43 characters of base64") from error
        if len(self.key) != 32:
            raise ValueError("the EncodingAESKey must decode to 32 bytes")
        self.token = token
        self.app_id = app_id.encode()

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16]))

    def decrypt(self, signature: str, timestamp: str, nonce: str, encrypted: str) -> bytes:
        """The message XML of a push, once its signature and AppID check out."""
        expected = msg_signature(self.token, timestamp, nonce, encrypted)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise WeChatCryptoError("msg_signature does not match")
        try:
            data = base64.b64decode(encrypted, validate=True)
        except ValueError as error:
            raise WeChatCryptoError("the Encrypt element is not base64") from error
        if not data or len(data) % 16:
            raise WeChatCryptoError("the ciphertext is not whole AES blocks")
        decryptor = self._cipher().decryptor()
        padded = decryptor.update(data) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= BLOCK or padded[-pad:] != bytes([pad]) * pad:
            raise WeChatCryptoError("bad padding (wrong EncodingAESKey?)")
        plain = padded[:-pad]
        if len(plain) < 20:
            raise WeChatCryptoError("the plaintext is too short")
        (length,) = struct.unpack(">I", plain[16:20])
        message, app_id = plain[20 : 20 + length], plain[20 + length :]
        if len(message) != length or app_id != self.app_id:
            raise WeChatCryptoError("the message is not for this account (AppID)")
        return message

    def encrypt(self, message: bytes, timestamp: str, nonce: str) -> tuple[str, str]:
        """(Encrypt, msg_signature) as WeChat sends them: for replies, and for tests."""
        plain = os.urandom(16) + struct.pack(">I", len(message)) + message + self.app_id
        pad = BLOCK - len(plain) % BLOCK
        encryptor = self._cipher().encryptor()
        data = encryptor.update(plain + bytes([pad]) * pad) + encryptor.finalize()
        encrypted = base64.b64encode(data).decode()
        return encrypted, msg_signature(self.token, timestamp, nonce, encrypted)
