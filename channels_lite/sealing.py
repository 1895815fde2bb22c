"""Signing and encrypting stream entries with a shared keyring. Sans-IO.

Rules / theory of operation
===========================

* Anyone who can write to Redis can write a stream entry. With a keyring
  configured, a process writes every entry sealed with the first key and
  refuses (as malformed: logged, counted, skipped or dead-lettered) every
  entry that is not sealed with one of its keys. Without a keyring nothing
  here runs: the unsealed path costs one ``is None`` test.
* A keyring is ``id:base64key[,id:base64key...]``: the first key writes,
  all of them read. Rotation is therefore three deploys: add the new key
  *second* everywhere (everyone reads it), move it *first* (everyone writes
  it), drop the old one once no entry sealed with it can still be waiting.
* Two modes, one per writer; a reader with a keyring accepts both:

  - ``sign``: field ``s`` = key id, ``:``, HMAC-SHA256 (32 bytes) over the
    entry's other fields and the stream key. The payload stays readable.
  - ``encrypt``: every field but ``v`` and ``k`` is sealed with AES-256-GCM
    into field ``x`` = key id, ``:``, salt (16), nonce (12), ciphertext+tag.
    Needs the ``cryptography`` package (``channels-lite[crypto]``).

* The stream key is bound into the MAC (or the AEAD's associated data), so a
  sealed entry copied into another stream is refused. A copy re-added to the
  *same* stream is not detected (no freshness check: a dead letter must stay
  replayable); keep untrusted clients from writing at all with Redis ACLs.
* Canonical bytes (what a Node or Go writer must reproduce; see
  ``docs/wire-protocol.md``): ``lp(x)`` is a 4-byte big-endian length and
  ``x``. The MAC input, and the associated data, is ``lp(name) lp(value)``
  for each covered field in bytewise order of name, then ``lp(stream key)``.
  Keys are derived, never used directly: ``HMAC-SHA256(key, "channels-lite/1
  sign")`` for MACs, ``HMAC-SHA256(key, "channels-lite/1 encrypt")`` then
  ``HMAC-SHA256(that, salt)`` for AES-GCM.
* Encryption nonces: each writer (keyring instance, and again after a fork)
  draws a random salt, so each process encrypts under a key of its own, and
  a random 96-bit nonce per entry; after 2**28 entries it draws a new salt.
  No key ever sees enough random nonces for a collision to be a concern.
* Nothing from the wire is trusted: every failure is a :class:`SealError`
  (a :class:`~channels_lite.exceptions.WireError`), so the existing handling
  of malformed entries applies unchanged. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .exceptions import ConfigError, WireError

__all__ = [
    "MODES",
    "SEALED_FIELD",
    "SIGNATURE_FIELD",
    "Keyring",
    "SealError",
    "canonical",
    "keyring_from_env",
    "keyring_from_settings",
]

MODES: Final = ("sign", "encrypt")
SIGNATURE_FIELD: Final = b"s"
SEALED_FIELD: Final = b"x"
#: Fields an encrypted entry keeps in clear: what a reader needs to route it.
CLEAR_FIELDS: Final = (b"k", b"v")
MIN_KEY_BYTES: Final = 16
_KEY_ID_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
_MAC_LABEL: Final = b"channels-lite/1 sign"
_ENCRYPT_LABEL: Final = b"channels-lite/1 encrypt"
_SALT: Final = 16
_NONCE: Final = 12
_TAG: Final = 16
_MAC: Final = 32
#: Entries one salt encrypts before the writer draws another.
_SALT_USES: Final = 1 << 28
#: Derived AES-GCM keys a reader caches (one per writer process and key).
_READER_CACHE: Final = 4096
_LEN = struct.Struct(">I").pack


class SealError(WireError):
    """An entry is not sealed with a key of this keyring (or not at all)."""


def _lp(data: bytes) -> bytes:
    return _LEN(len(data)) + data


def canonical(fields: Mapping[bytes, bytes], stream: str, *, skip: bytes) -> bytes:
    """The bytes a MAC (or associated data) covers: every field but ``skip``,
    by name, each as ``lp(name) lp(value)``, then ``lp(stream)``."""
    parts: list[bytes] = []
    for name in sorted(fields):
        if name != skip:
            value = fields[name]
            # One join at the end: a large body is copied once.
            parts += (_LEN(len(name)), name, _LEN(len(value)), value)
    key = stream.encode()
    parts += (_LEN(len(key)), key)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class _Key:
    id: bytes
    mac: Any  # an hmac object holding the derived MAC key, copied per entry
    encrypt: bytes  # the derived encryption key (a salt makes the AES key)


def _derive(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, label, hashlib.sha256).digest()


def _parse(spec: str) -> list[_Key]:
    keys: list[_Key] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        key_id, sep, encoded = item.partition(":")
        if not sep or not _KEY_ID_RE.fullmatch(key_id):
            raise ConfigError(
                "keys must be 'id:base64key[,id:base64key...]' with ids of at most 32 "
                f"letters, digits, '.', '_' or '-'; got an item starting {item[:8]!r}..."
            )
        try:
            secret = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"key {key_id!r} is not valid base64") from None
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(
                f"key {key_id!r} has {len(secret)} bytes; use at least {MIN_KEY_BYTES} "
                "(32 random bytes: `openssl rand -base64 32`)"
            )
        if any(k.id == key_id.encode() for k in keys):
            raise ConfigError(f"key id {key_id!r} appears twice")
        mac = hmac.new(_derive(secret, _MAC_LABEL), digestmod=hashlib.sha256)
        keys.append(_Key(key_id.encode(), mac, _derive(secret, _ENCRYPT_LABEL)))
    if not keys:
        raise ConfigError("keys is set but names no key")
    return keys


def _aead_class() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return None
    return AESGCM


class Keyring:
    """The keys of one deployment; seals what this process writes, checks what it reads.

    Args:
        spec: ``id:base64key[,id:base64key...]``; the first key writes.
        mode: ``sign`` or ``encrypt`` (how this process writes).

    Raises:
        ConfigError: a malformed spec, a short key, an unknown mode, or
            ``encrypt`` without the ``cryptography`` package.
    """

    def __init__(self, spec: str, mode: str = "sign") -> None:
        if mode not in MODES:
            raise ConfigError(f"seal must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self._keys = _parse(spec)
        self._by_id = {key.id: key for key in self._keys}
        self._writer = self._keys[0]
        self._prefix = self._writer.id + b":"
        self._aead = _aead_class()
        if mode == "encrypt" and self._aead is None:
            raise ConfigError(
                "seal=encrypt needs the cryptography package: pip install 'channels-lite[crypto]'"
            )
        self._opened: dict[tuple[bytes, bytes], Any] = {}
        self._salt = b""
        self._sealer: Any = None
        self._uses = 0
        _keyrings.add(self)

    @property
    def key_ids(self) -> list[str]:
        """The key ids, the writing key first."""
        return [key.id.decode() for key in self._keys]

    # ------------------------------------------------------------------
    # Writing

    def seal(self, stream: str, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """``fields`` signed or encrypted for ``stream`` (a new dict; the input is kept)."""
        if self.mode == "sign":
            mac = self._writer.mac.copy()
            mac.update(canonical(fields, stream, skip=SIGNATURE_FIELD))
            sealed = dict(fields)
            sealed[SIGNATURE_FIELD] = self._prefix + mac.digest()
            return sealed
        return self._encrypt(stream, fields)

    def _encrypt(self, stream: str, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
        if self._sealer is None or self._uses >= _SALT_USES:
            self._new_salt()
        self._uses += 1
        clear: dict[bytes, bytes] = {n: fields[n] for n in CLEAR_FIELDS if n in fields}
        secret = {n: v for n, v in fields.items() if n not in clear and n != SIGNATURE_FIELD}
        plaintext = b"".join(_lp(name) + _lp(secret[name]) for name in sorted(secret))
        nonce = os.urandom(_NONCE)
        sealed = self._sealer.encrypt(nonce, plaintext, canonical(clear, stream, skip=b""))
        clear[SEALED_FIELD] = self._prefix + self._salt + nonce + sealed
        return clear

    def _new_salt(self) -> None:
        self._salt = os.urandom(_SALT)
        self._sealer = self._aead(_derive(self._writer.encrypt, self._salt))
        self._uses = 0

    def _forget_salt(self) -> None:
        # After fork(): the child must not continue the parent's salt.
        self._sealer = None

    # ------------------------------------------------------------------
    # Reading

    def unseal(self, stream: str, fields: Mapping[bytes, bytes]) -> Mapping[bytes, bytes]:
        """``fields`` as written, if sealed with one of our keys for ``stream``.

        A signed entry comes back as it is (the ``s`` field does no harm); an
        encrypted one as its decrypted fields.

        Raises:
            SealError: not sealed, sealed with an unknown key, for another
                stream, or altered since.
        """
        box = fields.get(SEALED_FIELD)
        if box is not None:
            return self._decrypt(stream, fields, box)
        signature = fields.get(SIGNATURE_FIELD)
        if signature is None:
            raise SealError("entry is not signed, and this process requires a signature")
        key_id, _, tag = signature.partition(b":")
        key = self._by_id.get(key_id)
        if key is None:
            raise SealError(f"entry is signed with unknown key {key_id[:32]!r}")
        mac = key.mac.copy()
        mac.update(canonical(fields, stream, skip=SIGNATURE_FIELD))
        if len(tag) != _MAC or not hmac.compare_digest(mac.digest(), tag):
            raise SealError(
                f"bad signature (key {key_id.decode()!r}): altered, or written for another stream"
            )
        return fields

    def _decrypt(
        self, stream: str, fields: Mapping[bytes, bytes], box: bytes
    ) -> dict[bytes, bytes]:
        if self._aead is None:
            raise SealError("entry is encrypted; reading it needs the cryptography package")
        key_id, _, rest = box.partition(b":")
        key = self._by_id.get(key_id)
        if key is None:
            raise SealError(f"entry is encrypted with unknown key {key_id[:32]!r}")
        if len(rest) < _SALT + _NONCE + _TAG:
            raise SealError("encrypted field 'x' is too short")
        salt, nonce, sealed = rest[:_SALT], rest[_SALT : _SALT + _NONCE], rest[_SALT + _NONCE :]
        opener = self._opened.get((key_id, salt))
        if opener is None:
            if len(self._opened) >= _READER_CACHE:
                self._opened.clear()
            opener = self._opened[(key_id, salt)] = self._aead(_derive(key.encrypt, salt))
        from cryptography.exceptions import InvalidTag

        try:
            plaintext = opener.decrypt(nonce, sealed, canonical(fields, stream, skip=SEALED_FIELD))
        except InvalidTag:
            raise SealError(
                f"cannot decrypt (key {key_id.decode()!r}): altered, or written for another stream"
            ) from None
        opened = {name: value for name, value in fields.items() if name != SEALED_FIELD}
        opened.update(_split(plaintext))
        return opened


def _split(plaintext: bytes) -> dict[bytes, bytes]:
    """Fields back out of ``lp(name) lp(value) ...`` (authenticated, so well formed)."""
    out: dict[bytes, bytes] = {}
    pos, end = 0, len(plaintext)
    while pos < end:
        items = []
        for _ in range(2):
            if pos + 4 > end:
                raise SealError("encrypted fields are truncated")
            (size,) = struct.unpack_from(">I", plaintext, pos)
            pos += 4
            if pos + size > end:
                raise SealError("encrypted fields are truncated")
            items.append(plaintext[pos : pos + size])
            pos += size
        out[items[0]] = items[1]
    return out


def keyring_from_settings(keys: str, seal: str) -> Keyring | None:
    """The keyring of a process's ``keys`` and ``seal`` settings (``None``: no keys).

    Raises:
        ConfigError: as :class:`Keyring`; ``seal`` is checked even without keys.
    """
    if seal not in MODES:
        raise ConfigError(f"seal must be one of {', '.join(MODES)}, not {seal!r}")
    if not keys or not keys.strip():
        return None
    return Keyring(keys, seal)


def keyring_from_env(
    keys: str | None = None, seal: str | None = None, environ: Mapping[str, str] | None = None
) -> Keyring | None:
    """As :func:`keyring_from_settings`, with ``CHANNELS_LITE_KEYS`` and
    ``CHANNELS_LITE_SEAL`` for what is ``None``."""
    env = os.environ if environ is None else environ
    if keys is None:
        keys = env.get("CHANNELS_LITE_KEYS", "")
    if seal is None:
        seal = env.get("CHANNELS_LITE_SEAL") or "sign"
    return keyring_from_settings(keys, seal)


_keyrings: weakref.WeakSet[Keyring] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for keyring in list(_keyrings):
        keyring._forget_salt()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
