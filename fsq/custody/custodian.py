"""The custodian key (Ed25519): decisions that authorise destruction are signed, not just written.

Why: the state database is not tamper-proof. Someone who can write it (but has no passphrase)
could set ``incidents.cleared_*`` and append a correctly chained ``incident.cleared`` row, or
mark a hold lifted, and the next purge would destroy evidence. Every clearance, hold lift and
destruction request therefore carries an Ed25519 signature over its canonical content, made with
a key that only the passphrase opens, and ``fsq purge`` verifies each one.

Files, beside the vault key pair (same directory as each half)::

    custodian.key  (0600)  {"format": "fsq-custodian-private-key", "version": 1, "kdf": ...,
                            "aead": "aes-256-gcm", "check", "nonce", "ciphertext",
                            "public_key", "fingerprint"}
    custodian.pub  (0644)  fsq-custodian-public-key v1 <base64 raw 32 bytes> <fingerprint>

The private file is the vault private key's format (``fsq.quarantine.keys``) with another
``format`` and another HKDF label, encrypted under the *same* passphrase: one secret for a
person to keep, and the KDF, AEAD and tamper checks are the reviewed ones. The fingerprint is
the vault key's (first 8 bytes of SHA-256 of the raw public key). When the key is made, its
fingerprint is appended to the audit log (``custodian.created``); verification pins the
earliest such event, so a later swap of ``custodian.pub`` (without rewriting the chain) is
detected.

A scanner host needs none of this: it never signs decisions.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fsq.errors import ConfigError, IntegrityError, UsageError
from fsq.quarantine import keys as vk
from fsq.quarantine.store_dir import replace_file, write_new_file
from fsq.secrets import Secret

PRIVATE_FORMAT = "fsq-custodian-private-key"
PUBLIC_MAGIC = "fsq-custodian-public-key"
VERSION = 1
_LABEL = b"fsq-custodian-private-key v1"
_HINT = "create it with `fsq key custodian-init` (existing installs) or `fsq init`"


def paths(public_vault_key: Path, private_vault_key: Path) -> tuple[Path, Path]:
    """(custodian.pub, custodian.key) beside the vault public and private key."""
    return (public_vault_key.with_name("custodian.pub"),
            private_vault_key.with_name("custodian.key"))


def _raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Verifier:
    """The custodian public key: checks signatures (needs no secret)."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self.public_key = public_key
        self.fingerprint = vk.fingerprint(_raw_public(public_key))

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            sig = base64.b64decode(signature.encode("ascii"), validate=True)
            self.public_key.verify(sig, message)
        except (InvalidSignature, ValueError, UnicodeEncodeError, AttributeError):
            return False
        return True


class Signer(Verifier):
    """An unlocked custodian key. Lives in process memory only while a command runs."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        super().__init__(private_key.public_key())
        self._private = private_key

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._private.sign(message)).decode("ascii")

    def __repr__(self) -> str:
        return f"Signer({self.fingerprint})"


def _encrypt(private_key: Ed25519PrivateKey, passphrase: Secret) -> bytes:
    pw = vk._check_passphrase(passphrase)
    pub = _raw_public(private_key)
    kdf = vk.new_kdf_params()
    aead_key, check = vk._derive(kdf, pw, _LABEL)
    header = {"format": PRIVATE_FORMAT, "version": VERSION, "kdf": kdf,
              "aead": vk.AEAD_NAME, "check": vk._b64(check), "public_key": vk._b64(pub),
              "fingerprint": vk.fingerprint(pub)}
    nonce = os.urandom(12)
    raw = private_key.private_bytes(serialization.Encoding.Raw,
                                    serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    ct = AESGCM(aead_key).encrypt(nonce, raw, vk._canonical(header))
    doc = dict(header, nonce=vk._b64(nonce), ciphertext=vk._b64(ct))
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")


def public_text(public_key: Ed25519PublicKey) -> str:
    raw = _raw_public(public_key)
    return ("# fsq custodian public key: verifies signed clearances, hold lifts and "
            "destructions.\n"
            f"{PUBLIC_MAGIC} v{VERSION} {vk._b64(raw)} {vk.fingerprint(raw)}\n")


def generate(public_path: Path, private_path: Path, passphrase: Secret) -> str:
    """Create the custodian key pair; refuse to replace one. Returns the fingerprint."""
    for p in (private_path, public_path):
        if os.path.lexists(p):
            raise UsageError(f"{p} already exists; fsq never replaces a custodian key (every "
                             "signed decision would stop verifying). Move it away first.")
    key = Ed25519PrivateKey.generate()
    try:
        for p in (private_path, public_path):
            vk._make_private_dirs(str(p))
        write_new_file(str(private_path), _encrypt(key, passphrase), 0o600)
        write_new_file(str(public_path), public_text(key.public_key()).encode("ascii"), 0o644)
    except FileExistsError:
        raise UsageError(f"{private_path} or {public_path} appeared meanwhile; retry") from None
    except OSError as e:
        raise ConfigError(f"cannot write the custodian key: {e.strerror or e}") from None
    return vk.fingerprint(_raw_public(key))


def load_verifier(public_path: Path) -> Verifier:
    data = vk._read_small(str(public_path), "custodian public key")
    try:
        lines = [ln.strip() for ln in data.decode("ascii").splitlines()]
    except UnicodeDecodeError:
        lines = []
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    parts = lines[0].split() if len(lines) == 1 else []
    if len(parts) != 4 or parts[0] != PUBLIC_MAGIC or parts[1] != f"v{VERSION}":
        raise ConfigError(f"{public_path} is not an fsq custodian public key; {_HINT}")
    try:
        raw = vk._unb64(parts[2], "key", 32)
    except ValueError as e:
        raise ConfigError(f"custodian public key {public_path} is malformed ({e})") from None
    if parts[3] != vk.fingerprint(raw):
        raise IntegrityError(f"custodian public key {public_path} was altered: its "
                             "fingerprint does not match the key")
    return Verifier(Ed25519PublicKey.from_public_bytes(raw))


def unlock(private_path: Path, passphrase: Secret) -> Signer:
    """Decrypt the custodian key. Wrong passphrase: ConfigError (exit 2); altered file:
    IntegrityError (exit 4); missing: ConfigError naming the command that creates it."""
    path = str(private_path)
    if not os.path.exists(path):
        raise ConfigError(f"no custodian key at {path}; {_HINT}")
    pw = vk._check_passphrase(passphrase)
    data = vk._read_small(path, "custodian private key")
    try:
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != PRIVATE_FORMAT:
            raise ConfigError(f"{path} is not an fsq custodian private key")
        if doc.get("version") != VERSION or doc.get("aead") != vk.AEAD_NAME:
            raise ConfigError(f"custodian key {path} has an unknown version; upgrade fsq")
        vk._validate_kdf(doc["kdf"])
        check = vk._unb64(doc["check"], "check", 16)
        nonce = vk._unb64(doc["nonce"], "nonce", 12)
        ct = vk._unb64(doc["ciphertext"], "ciphertext", 48)
        pub = vk._unb64(doc["public_key"], "public_key", 32)
        if doc["fingerprint"] != vk.fingerprint(pub):
            raise ValueError("fingerprint does not match public_key")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"custodian private key {path} is damaged or was altered ({e}); "
                             "restore it from your backup") from None
    aead_key, want = vk._derive(doc["kdf"], pw, _LABEL)
    if not hmac.compare_digest(check, want):
        raise ConfigError(f"wrong passphrase for custodian key {path} (it uses the vault "
                          "passphrase)")
    header = {k: v for k, v in doc.items() if k not in ("nonce", "ciphertext")}
    try:
        raw = AESGCM(aead_key).decrypt(nonce, ct, vk._canonical(header))
    except InvalidTag:
        raise IntegrityError(f"custodian private key {path} was altered or is damaged") \
            from None
    key = Ed25519PrivateKey.from_private_bytes(raw)
    if not hmac.compare_digest(_raw_public(key), pub):
        raise IntegrityError(f"custodian private key {path} does not match its public key")
    return Signer(key)


def change_passphrase(private_path: Path, old: Secret, new: Secret) -> None:
    """Re-encrypt under a new passphrase (kept in step with the vault key's)."""
    signer = unlock(private_path, old)
    replace_file(str(private_path), _encrypt(signer._private, new), 0o600)
