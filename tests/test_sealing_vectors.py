"""The sealed-entry vectors (``tests/vectors/sealed/*.json``), by the codec and by the document.

Why: a Node or Go publisher must be able to sign (or encrypt) entries that
our processes accept, from docs/wire-protocol.md alone. Each vector is
checked twice: against :mod:`channels_lite.sealing`, and against a second
implementation written here from the document's description (the standard
library's ``hmac`` and ``cryptography``'s AES-GCM, nothing of ours), so the
document, the code and the bytes cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from channels_lite.sealing import Keyring, SealError

FILES = sorted((Path(__file__).parent / "vectors" / "sealed").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return vector


def fields_of(hex_fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): bytes.fromhex(v) for k, v in hex_fields.items()}


def secrets_of(keys: str) -> dict[bytes, bytes]:
    pairs = (item.split(":", 1) for item in keys.split(","))
    return {kid.encode(): base64.b64decode(b64) for kid, b64 in pairs}


def lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def covered(fields: dict[bytes, bytes], stream: str, skip: bytes) -> bytes:
    # The document: every field but the seal, sorted by name, then the stream.
    out = b"".join(lp(n) + lp(fields[n]) for n in sorted(fields) if n != skip)
    return out + lp(stream.encode())


def test_there_are_vectors_of_both_modes() -> None:
    assert {load(p)["mode"] for p in FILES} == {"sign", "encrypt"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_the_codec_opens_the_sealed_entry(path: Path) -> None:
    vector = load(path)
    keyring = Keyring(vector["keys"], vector["mode"])
    sealed, fields = fields_of(vector["sealed"]), fields_of(vector["fields"])
    opened = dict(keyring.unseal(vector["stream"], sealed))
    opened.pop(b"s", None)
    assert opened == fields
    with pytest.raises(SealError):
        keyring.unseal(vector["stream"] + "x", sealed)
    with pytest.raises(SealError):
        Keyring("other:" + base64.b64encode(b"o" * 32).decode()).unseal(vector["stream"], sealed)


@pytest.mark.parametrize(
    "path", [p for p in FILES if load(p)["mode"] == "sign"], ids=lambda p: p.stem
)
def test_signing_is_exact_bytes(path: Path) -> None:
    vector = load(path)
    fields, sealed = fields_of(vector["fields"]), fields_of(vector["sealed"])
    assert Keyring(vector["keys"]).seal(vector["stream"], fields) == sealed
    # The second implementation, from the document.
    writer_id, secret = next(iter(secrets_of(vector["keys"]).items()))  # the first key writes
    mac_key = hmac.new(secret, b"channels-lite/1 sign", hashlib.sha256).digest()
    mac = hmac.new(mac_key, covered(fields, vector["stream"], b"s"), hashlib.sha256).digest()
    assert sealed[b"s"] == writer_id + b":" + mac
    assert list(sealed) == [*fields, b"s"]


@pytest.mark.parametrize(
    "path", [p for p in FILES if load(p)["mode"] == "encrypt"], ids=lambda p: p.stem
)
def test_decrypting_by_the_document(path: Path) -> None:
    vector = load(path)
    sealed, fields = fields_of(vector["sealed"]), fields_of(vector["fields"])
    assert set(sealed) == {b"v", b"k", b"x"}
    key_id, _, rest = sealed[b"x"].partition(b":")
    salt, nonce, ciphertext = rest[:16], rest[16:28], rest[28:]
    secret = secrets_of(vector["keys"])[key_id]
    enc_key = hmac.new(secret, b"channels-lite/1 encrypt", hashlib.sha256).digest()
    aes_key = hmac.new(enc_key, salt, hashlib.sha256).digest()
    clear = {n: v for n, v in sealed.items() if n != b"x"}
    plaintext = AESGCM(aes_key).decrypt(nonce, ciphertext, covered(clear, vector["stream"], b""))
    opened, pos = dict(clear), 0
    while pos < len(plaintext):
        size = int.from_bytes(plaintext[pos : pos + 4], "big")
        name = plaintext[pos + 4 : pos + 4 + size]
        pos += 4 + size
        size = int.from_bytes(plaintext[pos : pos + 4], "big")
        opened[name] = plaintext[pos + 4 : pos + 4 + size]
        pos += 4 + size
    assert opened == fields
