"""The instance's attestation signing key (Ed25519), separate from the vault key.

Why separate: the vault key protects evidence; this key speaks for the instance to its peers.
Losing or rotating one must not touch the other, and a host that signs statements never needs
to be able to open the vault.

File (``keys/attest.key`` by default, mode 0600, JSON)::

    {"format": "fsq-attest-signing-key", "version": 1, "kdf": {...}, "aead": "aes-256-gcm",
     "check": b64(16), "nonce": b64(12), "ciphertext": b64(32-byte seed + 16-byte tag),
     "public_key": b64(32), "keyid": sha256-hex(public key)}

The passphrase protection is exactly the vault key's (fsq.quarantine.keys): the same KDF
(Argon2id, scrypt fallback, the same cost bounds and ``FSQ_TESTONLY_WEAKEN_KDF``), the same
HKDF split into an AES-256-GCM key and a passphrase check, and the header as associated data.
This module adds no second KDF; it only uses a different ``format`` (inside the AAD, so a
vault key file can never be taken for a signing key or the other way round).

The public half is stored in clear so that ``fsq attest serve`` can publish keys.json without
the passphrase; decryption checks that the seed reproduces it.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fsq.errors import ConfigError, IntegrityError, UsageError
from fsq.exchange.dsse import b64, keyid, raw_public
from fsq.quarantine import keys as vault_keys
from fsq.quarantine.store_dir import write_new_file
from fsq.secrets import Secret

FORMAT = "fsq-attest-signing-key"
VERSION = 1
log = logging.getLogger(__name__)
_FIELDS = {"format", "version", "kdf", "aead", "check", "nonce", "ciphertext", "public_key",
           "keyid"}
_MAX = 64 * 1024
_HINT = "create one with `fsq attest keygen` (or point FSQ_ATTEST_KEY at it)"


def _unb64(v: Any, what: str, n: int) -> bytes:
    return vault_keys._unb64(v, what, n)


def generate(path: str | os.PathLike[str], passphrase: Secret) -> str:
    """Write a new signing key; return its key id. Never overwrites (peers pinned the old
    key: replacing it silently would make every peer refuse this instance)."""
    path = os.fspath(path)
    if os.path.lexists(path):
        raise UsageError(f"{path} already exists; fsq never overwrites a signing key (peers "
                         "pinned it). Move it away first.")
    pw = vault_keys._check_passphrase(passphrase)
    key = Ed25519PrivateKey.generate()
    pub = raw_public(key)
    kdf = vault_keys.new_kdf_params()
    aead_key, check = vault_keys._derive(kdf, pw)
    header = {"format": FORMAT, "version": VERSION, "kdf": kdf, "aead": vault_keys.AEAD_NAME,
              "check": b64(check), "public_key": b64(pub), "keyid": keyid(pub)}
    nonce = os.urandom(12)
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    ct = AESGCM(aead_key).encrypt(nonce, seed, vault_keys._canonical(header))
    doc = dict(header, nonce=b64(nonce), ciphertext=b64(ct))
    try:
        vault_keys._make_private_dirs(path)
        write_new_file(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists; fsq never overwrites a signing key") from None
    except OSError as e:
        raise ConfigError(f"cannot write signing key {path}: {e.strerror or e}") from None
    return keyid(pub)


def _parse(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX + 1)
    except FileNotFoundError:
        raise ConfigError(f"signing key {path} not found; {_HINT}") from None
    except OSError as e:
        raise ConfigError(f"cannot read signing key {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(data.decode("utf-8")) if len(data) <= _MAX else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an fsq attestation signing key; {_HINT}")
    if doc.get("version") != VERSION:
        raise ConfigError(f"signing key {path} has version {doc.get('version')!r}; this fsq "
                          f"reads version {VERSION}; upgrade fsq")
    try:
        if set(doc) != _FIELDS or doc["aead"] != vault_keys.AEAD_NAME:
            raise ValueError("unexpected or missing fields")
        vault_keys._validate_kdf(doc["kdf"])
        _unb64(doc["check"], "check", 16)
        _unb64(doc["nonce"], "nonce", 12)
        _unb64(doc["ciphertext"], "ciphertext", 48)
        if doc["keyid"] != keyid(_unb64(doc["public_key"], "public_key", 32)):
            raise ValueError("keyid does not match public_key")
    except ValueError as e:
        raise IntegrityError(f"signing key {path} is damaged or was altered ({e}); restore "
                             "it from your backup") from None
    return doc


def load_public(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The public half (no passphrase needed), for keys.json."""
    doc = _parse(os.fspath(path))
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"]))


def load_private(path: str | os.PathLike[str], passphrase: Secret) -> Ed25519PrivateKey:
    """Decrypt the signing key. Wrong passphrase: ConfigError (2); altered: IntegrityError (4)."""
    path = os.fspath(path)
    pw = vault_keys._check_passphrase(passphrase)
    doc = _parse(path)
    aead_key, check = vault_keys._derive(doc["kdf"], pw)
    if not hmac.compare_digest(check, base64.b64decode(doc["check"])):
        raise ConfigError(f"wrong passphrase for signing key {path}")
    header = {k: v for k, v in doc.items() if k not in ("nonce", "ciphertext")}
    try:
        seed = AESGCM(aead_key).decrypt(base64.b64decode(doc["nonce"]),
                                        base64.b64decode(doc["ciphertext"]),
                                        vault_keys._canonical(header))
    except InvalidTag:
        raise IntegrityError(f"signing key {path} was altered or is damaged; restore it from "
                             "your backup") from None
    key = Ed25519PrivateKey.from_private_bytes(seed)
    if not hmac.compare_digest(raw_public(key), base64.b64decode(doc["public_key"])):
        raise IntegrityError(f"signing key {path} does not match its public key")
    if vault_keys._is_weak(doc["kdf"]):
        log.warning("signing key %s uses weak key-derivation costs (made with "
                    "FSQ_TESTONLY_WEAKEN_KDF?); make a new key for production use", path)
    return key
