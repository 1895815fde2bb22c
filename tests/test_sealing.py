"""The keyring: sealed entries round-trip, everything else is refused.

Why: with ``CHANNELS_LITE_KEYS`` set, a process must act only on entries
written by someone holding a key. These are pure byte-level tests of
:mod:`channels_lite.sealing` (sans-IO, no Redis): the signed and encrypted
forms round-trip, a wrong key, a missing seal, a changed field, a foreign
stream are refused with a ``WireError`` (so every reader's existing handling
of malformed entries applies), and rotation keeps old entries readable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys

import pytest

from channels_lite import sealing, wire
from channels_lite.exceptions import ConfigError, WireError
from channels_lite.sealing import Keyring, SealError

STREAM = "asgi:ch:ps.abc!"
KEY_A = "a:" + base64.b64encode(b"A" * 32).decode()
KEY_B = "b:" + base64.b64encode(b"B" * 32).decode()
MODES = sealing.MODES


def entry() -> dict[bytes, bytes]:
    body = wire.encode_message({"type": "chat.message", "text": "hi", "raw": b"\x00\xff"})
    return wire.channel_message_fields(("ps.abc!1", "ps.abc!2"), body)


@pytest.mark.parametrize("mode", MODES)
def test_round_trip(mode: str) -> None:
    keyring = Keyring(KEY_A, mode)
    fields = entry()
    sealed = keyring.seal(STREAM, fields)
    assert sealed != fields
    opened = keyring.unseal(STREAM, sealed)
    assert wire.decode(opened) == wire.decode(fields)
    assert wire.split_channel_message(opened) == wire.split_channel_message(fields)


def test_encrypt_hides_everything_but_version_and_kind() -> None:
    sealed = Keyring(KEY_A, "encrypt").seal(STREAM, entry())
    assert set(sealed) == {b"v", b"k", b"x"}
    assert b"chat.message" not in sealed[b"x"]
    assert b"ps.abc" not in sealed[b"x"]


def test_sign_keeps_the_payload_readable_to_anyone() -> None:
    # A reader without a keyring ignores the extra field (additive change).
    sealed = Keyring(KEY_A, "sign").seal(STREAM, entry())
    assert set(sealed) == {b"v", b"k", b"to", b"d", b"s"}
    assert wire.decode(sealed) == wire.decode(entry())


@pytest.mark.parametrize("mode", MODES)
def test_wrong_key_is_refused(mode: str) -> None:
    sealed = Keyring(KEY_B, mode).seal(STREAM, entry())
    with pytest.raises(SealError, match="unknown key"):
        Keyring(KEY_A, mode).unseal(STREAM, sealed)


@pytest.mark.parametrize("mode", MODES)
def test_same_key_id_other_secret_is_refused(mode: str) -> None:
    impostor = "a:" + base64.b64encode(b"Z" * 32).decode()
    sealed = Keyring(impostor, mode).seal(STREAM, entry())
    with pytest.raises(SealError, match=r"altered|decrypt"):
        Keyring(KEY_A, mode).unseal(STREAM, sealed)


@pytest.mark.parametrize("mode", MODES)
def test_unsealed_entry_is_refused(mode: str) -> None:
    with pytest.raises(SealError, match="not signed"):
        Keyring(KEY_A, mode).unseal(STREAM, entry())


def test_a_seal_error_is_a_wire_error() -> None:
    # Every reader already logs, counts and moves aside WireErrors.
    assert issubclass(SealError, WireError)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", [b"v", b"k", b"to", b"d"])
def test_a_changed_field_is_refused(mode: str, field: bytes) -> None:
    keyring = Keyring(KEY_A, mode)
    sealed = keyring.seal(STREAM, entry())
    if field in sealed:
        tampered = {**sealed, field: sealed[field] + b"\x00"}
    else:  # encrypted: flip a bit of the ciphertext instead
        box = bytearray(sealed[b"x"])
        box[-20] ^= 1
        tampered = {**sealed, b"x": bytes(box)}
    with pytest.raises(SealError):
        keyring.unseal(STREAM, tampered)


@pytest.mark.parametrize("mode", MODES)
def test_an_added_field_is_refused(mode: str) -> None:
    keyring = Keyring(KEY_A, mode)
    sealed = keyring.seal(STREAM, entry())
    with pytest.raises(SealError):
        keyring.unseal(STREAM, {**sealed, b"extra": b"1"})


@pytest.mark.parametrize("mode", MODES)
def test_a_copy_into_another_stream_is_refused(mode: str) -> None:
    keyring = Keyring(KEY_A, mode)
    sealed = keyring.seal(STREAM, entry())
    with pytest.raises(SealError):
        keyring.unseal("asgi:ch:ps.other!", sealed)


@pytest.mark.parametrize("mode", MODES)
def test_rotation(mode: str) -> None:
    old_only = Keyring(KEY_A, mode)
    # Step 1: the new key is added second everywhere; writers still use a.
    step1 = Keyring(f"{KEY_A},{KEY_B}", mode)
    # Step 2: the new key moves first; b writes, a still reads.
    step2 = Keyring(f"{KEY_B},{KEY_A}", mode)
    # Step 3: a is dropped.
    step3 = Keyring(KEY_B, mode)
    written_old = old_only.seal(STREAM, entry())
    written_step1 = step1.seal(STREAM, entry())
    written_step2 = step2.seal(STREAM, entry())
    for reader in (old_only, step1, step2):  # everyone at step 1 or 2 reads step 1's
        reader.unseal(STREAM, written_step1)
    for reader in (step1, step2, step3):  # step 2's writes are read from step 1 on
        reader.unseal(STREAM, written_step2)
    step2.unseal(STREAM, written_old)  # still waiting from before: read
    with pytest.raises(SealError):
        step3.unseal(STREAM, written_old)  # the dropped key no longer reads
    assert step2.key_ids == ["b", "a"]


def test_a_sign_reader_reads_encrypted_entries_and_back() -> None:
    # Moving a deployment from sign to encrypt needs no flag day.
    signer, encrypter = Keyring(KEY_A, "sign"), Keyring(KEY_A, "encrypt")
    assert wire.decode(signer.unseal(STREAM, encrypter.seal(STREAM, entry()))).to == (
        "ps.abc!1",
        "ps.abc!2",
    )
    encrypter.unseal(STREAM, signer.seal(STREAM, entry()))


def test_each_writer_encrypts_under_its_own_salt_and_fresh_nonces() -> None:
    one, two = Keyring(KEY_A, "encrypt"), Keyring(KEY_A, "encrypt")
    a, b, c = (one.seal(STREAM, entry())[b"x"] for _ in range(3))
    other = two.seal(STREAM, entry())[b"x"]
    salt = slice(2, 18)
    nonce = slice(18, 30)
    assert a[salt] == b[salt] == c[salt] != other[salt]
    assert len({a[nonce], b[nonce], c[nonce]}) == 3


def test_the_signature_is_the_documented_algorithm() -> None:
    # What docs/wire-protocol.md tells a Node or Go writer to compute.
    secret = b"A" * 32
    fields = entry()
    sealed = Keyring(KEY_A, "sign").seal(STREAM, fields)
    mac_key = hmac.new(secret, b"channels-lite/1 sign", hashlib.sha256).digest()
    message = b""
    for name in sorted(fields):
        message += len(name).to_bytes(4, "big") + name
        message += len(fields[name]).to_bytes(4, "big") + fields[name]
    message += len(STREAM).to_bytes(4, "big") + STREAM.encode()
    expected = hmac.new(mac_key, message, hashlib.sha256).digest()
    assert sealed[b"s"] == b"a:" + expected


def test_truncated_signature_and_box_are_refused() -> None:
    keyring = Keyring(KEY_A, "sign")
    sealed = keyring.seal(STREAM, entry())
    with pytest.raises(SealError):
        keyring.unseal(STREAM, {**sealed, b"s": sealed[b"s"][:-1]})
    with pytest.raises(SealError, match="too short"):
        keyring.unseal(STREAM, {b"v": b"1", b"k": b"msg", b"x": b"a:" + b"\x00" * 20})


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("nokey", "id:base64key"),
        ("a:not base64!", "base64"),
        ("a:" + base64.b64encode(b"short").decode(), "at least 16"),
        (f"{KEY_A},{KEY_A}", "twice"),
        ("bad id:" + base64.b64encode(b"A" * 32).decode(), "id:base64key"),
        (" , ", "names no key"),
    ],
)
def test_bad_keyrings_are_config_errors(spec: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Keyring(spec)


def test_url_safe_base64_is_accepted() -> None:
    secret = bytes(range(200, 232))
    standard = "k:" + base64.b64encode(secret).decode()
    url_safe = "k:" + base64.urlsafe_b64encode(secret).decode()
    assert standard != url_safe
    sealed = Keyring(standard).seal(STREAM, entry())
    Keyring(url_safe).unseal(STREAM, sealed)


def test_settings() -> None:
    assert sealing.keyring_from_settings("", "sign") is None
    assert sealing.keyring_from_settings(KEY_A, "encrypt") is not None
    with pytest.raises(ConfigError, match="seal must be"):
        sealing.keyring_from_settings("", "scramble")
    env = {"CHANNELS_LITE_KEYS": KEY_A, "CHANNELS_LITE_SEAL": "encrypt"}
    from_env = sealing.keyring_from_env(environ=env)
    assert from_env is not None
    assert from_env.mode == "encrypt"
    assert sealing.keyring_from_env("", environ=env) is None  # "" means none, explicitly


def test_encrypt_without_the_extra_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if `cryptography` were not installed: its import fails.
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigError, match=r"channels-lite\[crypto\]"):
        Keyring(KEY_A, "encrypt")
    signer = Keyring(KEY_A, "sign")  # signing needs only the standard library
    encrypted = {b"v": b"1", b"k": b"msg", b"x": b"a:" + b"\x00" * 60}
    with pytest.raises(SealError, match="cryptography"):
        signer.unseal(STREAM, encrypted)
