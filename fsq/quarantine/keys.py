"""The vault key pair (X25519): the public key seals, the private key opens.

Why a key pair and not one symmetric key: the scanner, the upload hook and every machine that
quarantines need only the public key (ARCHITECTURE.md, invariant 2). A stolen scanner host
therefore cannot read the vault; reading evidence needs the private key *and* its passphrase.

Public key file (``vault.pub``, mode 0644, text)::

    # fsq vault public key: sealing needs only this file; it is safe to copy.
    fsq-vault-public-key v1 <base64 of the raw 32-byte X25519 public key> <fingerprint>

The fingerprint (``fingerprint()``) is the first 8 bytes of SHA-256 over the raw public key,
as hex in groups of four (``1a2b-3c4d-5e6f-7a8b``); it is checked on load, so an edited key
is detected, and humans compare it between hosts.

Private key file (``vault.key``, mode 0600, JSON)::

    {"format": "fsq-vault-private-key", "version": 1,
     "kdf": {"name": "argon2id", "salt": b64, "memory_kib": 262144, "iterations": 3,
             "lanes": 4}
            | {"name": "scrypt", "salt": b64, "n": 131072, "r": 8, "p": 1},
     "aead": "aes-256-gcm", "check": b64(16), "nonce": b64(12),
     "ciphertext": b64(32-byte raw private key + 16-byte tag),
     "public_key": b64(32), "fingerprint": "1a2b-3c4d-5e6f-7a8b"}

Derivation: ``master = KDF(passphrase, salt, params)`` (32 bytes), then HKDF-Expand-SHA256
splits it into the AES-256-GCM key (info ``fsq-vault-private-key v1 encryption``) and a 16-byte
passphrase check (info ``... passphrase check``). The check lets fsq tell "wrong passphrase"
(``ConfigError``, exit 2) from "file altered" (``IntegrityError``, exit 4); it reveals nothing
an attacker with the file could not already test against the ciphertext. The AEAD's
associated data is the canonical JSON (sorted keys, no spaces) of every field except
``nonce`` and ``ciphertext``, so the KDF parameters, the public key and the fingerprint cannot
be swapped or weakened without detection. After decryption the private key must reproduce the
stored public key.

KDF costs (``STRONG_ARGON2``): Argon2id, 256 MiB, 3 passes, 4 lanes - RFC 9106's
memory-constrained profile with 4x its memory; about 0.8 s on a 2-core VM. It runs only when a
person opens evidence, so interactive cost is acceptable and an offline guesser pays the same
per guess. Fallback when the installed ``cryptography`` lacks Argon2id (< 44, or an OpenSSL
without it): scrypt N=2^17, r=8, p=1 (128 MiB). With ``FSQ_TESTONLY_WEAKEN_KDF=1`` (tests only,
see ``fsq.testonly``) tiny costs are used and recorded, so such a file still opens.

The raw private key is never written anywhere: it is encrypted in memory and only the JSON
above reaches a (temp) file. Files are written atomically (temp, fsync, link/rename, directory
fsync) via ``fsq.quarantine.store_dir``. Python cannot reliably wipe memory; the key lives in
process memory while in use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fsq.errors import ConfigError, IntegrityError, UsageError
from fsq.quarantine.store_dir import fsync_dir, replace_file, write_new_file
from fsq.secrets import Secret
from fsq.testonly import weaken_kdf

log = logging.getLogger(__name__)

PUBLIC_MAGIC = "fsq-vault-public-key"
PRIVATE_FORMAT = "fsq-vault-private-key"
VERSION = 1
AEAD_NAME = "aes-256-gcm"

STRONG_ARGON2 = {"memory_kib": 256 * 1024, "iterations": 3, "lanes": 4}
STRONG_SCRYPT = {"n": 2 ** 17, "r": 8, "p": 1}
WEAK_ARGON2 = {"memory_kib": 8, "iterations": 1, "lanes": 1}      # tests only
WEAK_SCRYPT = {"n": 2 ** 4, "r": 8, "p": 1}                       # tests only
SALT_BYTES = 16
_MAX_KEY_FILE = 64 * 1024

_HINT = "run `fsq init` to create the vault keys, or point FSQ_VAULT_PUBLIC_KEY at the file"
_PRIVATE_FIELDS = {"format", "version", "kdf", "aead", "check", "nonce", "ciphertext",
                   "public_key", "fingerprint"}


# --- small helpers -----------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} is not a string")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{what} is not valid base64") from None
    if length is not None and len(data) != length:
        raise ValueError(f"{what} has {len(data)} bytes, expected {length}")
    return data


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def raw_public(key: X25519PublicKey | X25519PrivateKey) -> bytes:
    """The raw 32 bytes of a public key (of the public half, for a private key)."""
    if isinstance(key, X25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: X25519PublicKey | X25519PrivateKey | bytes) -> str:
    """Short, human-comparable id of a vault key: ``1a2b-3c4d-5e6f-7a8b``."""
    raw = key if isinstance(key, bytes) else raw_public(key)
    h = hashlib.sha256(raw).hexdigest()[:16]
    return "-".join(h[i:i + 4] for i in range(0, 16, 4))


def _check_passphrase(passphrase: Secret) -> bytes:
    if not isinstance(passphrase, Secret):
        raise TypeError("passphrase must be a fsq.secrets.Secret")
    value = passphrase.reveal_bytes()
    if not value:
        raise ConfigError("empty vault passphrase; an empty passphrase is not allowed")
    return value


# --- key derivation ----------------------------------------------------------------------------

_argon2_ok: bool | None = None


def argon2_available() -> bool:
    """Whether this ``cryptography`` build can do Argon2id (>= 44 with a capable backend)."""
    global _argon2_ok
    if _argon2_ok is None:
        try:
            from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
            Argon2id(salt=b"\0" * 16, length=32, iterations=1, lanes=1,
                     memory_cost=8).derive(b"probe")
            _argon2_ok = True
        except (ImportError, UnsupportedAlgorithm):
            _argon2_ok = False
    return _argon2_ok


def new_kdf_params() -> dict[str, Any]:
    """KDF parameters (with a fresh salt) for a file written now."""
    weak = weaken_kdf()
    salt = _b64(os.urandom(SALT_BYTES))
    if argon2_available():
        return {"name": "argon2id", "salt": salt, **(WEAK_ARGON2 if weak else STRONG_ARGON2)}
    return {"name": "scrypt", "salt": salt, **(WEAK_SCRYPT if weak else STRONG_SCRYPT)}


def _int(kdf: dict, name: str, lo: int, hi: int) -> int:
    v = kdf.get(name)
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"kdf.{name} missing or out of range [{lo}, {hi}]")
    return v


def _validate_kdf(kdf: Any) -> dict[str, Any]:
    """Check stored KDF parameters; bounds stop an altered file from demanding absurd work."""
    if not isinstance(kdf, dict):
        raise ValueError("kdf is not an object")
    if not 16 <= len(_unb64(kdf.get("salt"), "kdf.salt")) <= 64:
        raise ValueError("kdf.salt has a bad length")
    name = kdf.get("name")
    if name == "argon2id":
        if set(kdf) != {"name", "salt", "memory_kib", "iterations", "lanes"}:
            raise ValueError("kdf has unexpected fields")
        lanes = _int(kdf, "lanes", 1, 64)
        _int(kdf, "iterations", 1, 64)
        _int(kdf, "memory_kib", 8 * lanes, 4 * 1024 * 1024)
    elif name == "scrypt":
        if set(kdf) != {"name", "salt", "n", "r", "p"}:
            raise ValueError("kdf has unexpected fields")
        n = _int(kdf, "n", 2, 2 ** 22)
        r = _int(kdf, "r", 1, 32)
        _int(kdf, "p", 1, 16)
        if n & (n - 1) or 128 * n * r > 4 * 1024 ** 3:
            raise ValueError("kdf.n must be a power of two and n*r bounded")
    else:
        raise ValueError(f"unknown kdf {name!r}")
    return kdf


def _is_weak(kdf: dict[str, Any]) -> bool:
    if kdf["name"] == "argon2id":
        return kdf["memory_kib"] < 64 * 1024 or kdf["iterations"] < 2
    return kdf["n"] < 2 ** 15


def _derive(kdf: dict[str, Any], passphrase: bytes, label: bytes = b"fsq-vault-private-key v1"
            ) -> tuple[bytes, bytes]:
    """(aead_key, passphrase_check) for ``passphrase`` under validated ``kdf``. ``label``
    separates the keys derived for different files (the custodian key uses its own)."""
    salt = base64.b64decode(kdf["salt"])
    if kdf["name"] == "argon2id":
        if not argon2_available():
            raise ConfigError("this vault key file uses Argon2id, which the installed "
                              "'cryptography' lacks; install cryptography>=44")
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
        master = Argon2id(salt=salt, length=32, iterations=kdf["iterations"],
                          lanes=kdf["lanes"], memory_cost=kdf["memory_kib"]).derive(passphrase)
    else:
        master = Scrypt(salt=salt, length=32, n=kdf["n"], r=kdf["r"],
                        p=kdf["p"]).derive(passphrase)
    aead_key = HKDFExpand(hashes.SHA256(), 32, label + b" encryption").derive(master)
    check = HKDFExpand(hashes.SHA256(), 16, label + b" passphrase check").derive(master)
    return aead_key, check


# --- private key file --------------------------------------------------------------------------

def _encrypt_private(private_key: X25519PrivateKey, passphrase: Secret) -> bytes:
    pw = _check_passphrase(passphrase)
    pub = raw_public(private_key)
    kdf = new_kdf_params()
    aead_key, check = _derive(kdf, pw)
    header = {"format": PRIVATE_FORMAT, "version": VERSION, "kdf": kdf, "aead": AEAD_NAME,
              "check": _b64(check), "public_key": _b64(pub), "fingerprint": fingerprint(pub)}
    nonce = os.urandom(12)
    raw = private_key.private_bytes(serialization.Encoding.Raw,
                                    serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    ciphertext = AESGCM(aead_key).encrypt(nonce, raw, _canonical(header))
    doc = dict(header, nonce=_b64(nonce), ciphertext=_b64(ciphertext))
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")


def _read_small(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        hint = _HINT if "private" not in what else _HINT.replace(
            "FSQ_VAULT_PUBLIC_KEY", "FSQ_VAULT_PRIVATE_KEY (or --vault-private-key)")
        raise ConfigError(f"{what} {path} not found; {hint}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > _MAX_KEY_FILE:
        raise ConfigError(f"{path} is too large to be a {what}; check the path")
    return data


def _parse_private(path: str, data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        if data.lstrip().startswith(b"{"):
            raise IntegrityError(f"vault private key {path} is damaged (not valid JSON); "
                                 "restore it from your backup") from None
        hint = " (this looks like the public key file)" if data.lstrip().startswith(
            (b"#", PUBLIC_MAGIC.encode())) else ""
        raise ConfigError(f"{path} is not an fsq vault private key{hint}; "
                          "check FSQ_VAULT_PRIVATE_KEY") from None
    if not isinstance(doc, dict) or doc.get("format") != PRIVATE_FORMAT:
        raise ConfigError(f"{path} is not an fsq vault private key; check FSQ_VAULT_PRIVATE_KEY")
    if type(doc.get("version")) is not int or doc["version"] != VERSION:
        raise ConfigError(f"vault private key {path} has format version "
                          f"{doc.get('version')!r}, this fsq reads version {VERSION}; "
                          "upgrade fsq")
    try:
        if set(doc) != _PRIVATE_FIELDS:
            raise ValueError("unexpected or missing fields")
        if doc["aead"] != AEAD_NAME:
            raise ValueError(f"unknown aead {doc['aead']!r}")
        _validate_kdf(doc["kdf"])
        _unb64(doc["check"], "check", 16)
        _unb64(doc["nonce"], "nonce", 12)
        _unb64(doc["ciphertext"], "ciphertext", 48)
        pub = _unb64(doc["public_key"], "public_key", 32)
        if doc["fingerprint"] != fingerprint(pub):
            raise ValueError("fingerprint does not match public_key")
    except ValueError as e:
        raise IntegrityError(f"vault private key {path} is damaged or was altered ({e}); "
                             "restore it from your backup") from None
    return doc


def load_private_key(path: str | os.PathLike[str], passphrase: Secret) -> X25519PrivateKey:
    """Decrypt the vault private key.

    Wrong passphrase: ``ConfigError`` (exit 2). Altered or damaged file: ``IntegrityError``
    (exit 4). Not a key file / missing: ``ConfigError``.
    """
    path = os.fspath(path)
    pw = _check_passphrase(passphrase)
    doc = _parse_private(path, _read_small(path, "vault private key"))
    kdf = doc["kdf"]
    aead_key, check = _derive(kdf, pw)
    if not hmac.compare_digest(check, base64.b64decode(doc["check"])):
        raise ConfigError(f"wrong passphrase for vault private key {path}")
    header = {k: v for k, v in doc.items() if k not in ("nonce", "ciphertext")}
    try:
        raw = AESGCM(aead_key).decrypt(base64.b64decode(doc["nonce"]),
                                       base64.b64decode(doc["ciphertext"]), _canonical(header))
    except InvalidTag:
        raise IntegrityError(f"vault private key {path} was altered or is damaged (the "
                             "passphrase is right but the file does not authenticate); "
                             "restore it from your backup") from None
    private_key = X25519PrivateKey.from_private_bytes(raw)
    if not hmac.compare_digest(raw_public(private_key), base64.b64decode(doc["public_key"])):
        raise IntegrityError(f"vault private key {path} does not match the public key stored "
                             "in it; restore it from your backup")
    if _is_weak(kdf):
        log.warning("vault private key %s uses weak key-derivation costs (made with "
                    "FSQ_TESTONLY_WEAKEN_KDF?); change its passphrase to re-encrypt it", path)
    return private_key


def read_public_key_from_private_file(path: str | os.PathLike[str]) -> X25519PublicKey:
    """The public key stored (in clear, unauthenticated until decryption) in a private key
    file; lets an admin rebuild a lost ``vault.pub`` and compare fingerprints."""
    path = os.fspath(path)
    doc = _parse_private(path, _read_small(path, "vault private key"))
    return X25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"]))


def change_passphrase(private_path: str | os.PathLike[str], old: Secret, new: Secret) -> None:
    """Re-encrypt the private key under ``new`` (fresh salt and nonce, current KDF costs),
    replacing the file atomically. Wrong ``old``: ``ConfigError``; nothing changes."""
    path = os.fspath(private_path)
    _check_passphrase(new)
    private_key = load_private_key(path, old)
    try:
        replace_file(path, _encrypt_private(private_key, new), 0o600)
    except OSError as e:
        raise ConfigError(f"cannot rewrite vault private key {path}: {e.strerror or e}; "
                          "the old file is unchanged") from None


# --- public key file ---------------------------------------------------------------------------

def public_key_text(public_key: X25519PublicKey) -> str:
    raw = raw_public(public_key)
    return ("# fsq vault public key: sealing needs only this file; it is safe to copy.\n"
            f"{PUBLIC_MAGIC} v{VERSION} {_b64(raw)} {fingerprint(raw)}\n")


def load_public_key(path: str | os.PathLike[str]) -> X25519PublicKey:
    """Read ``vault.pub``. Missing or malformed: ``ConfigError`` with a ``fsq init`` hint;
    fingerprint mismatch (edited key): ``IntegrityError``."""
    path = os.fspath(path)
    data = _read_small(path, "vault public key")
    if data.lstrip().startswith(b"{"):
        raise ConfigError(f"{path} looks like the vault *private* key; FSQ_VAULT_PUBLIC_KEY "
                          "must name the public key file (vault.pub)")
    try:
        lines = [ln.strip() for ln in data.decode("ascii").splitlines()]
    except UnicodeDecodeError:
        lines = []
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    parts = lines[0].split() if len(lines) == 1 else []
    if len(parts) != 4 or parts[0] != PUBLIC_MAGIC:
        raise ConfigError(f"{path} is not an fsq vault public key; {_HINT}")
    if parts[1] != f"v{VERSION}":
        raise ConfigError(f"vault public key {path} has format {parts[1]!r}, this fsq reads "
                          f"v{VERSION}; upgrade fsq")
    try:
        raw = _unb64(parts[2], "key", 32)
    except ValueError as e:
        raise ConfigError(f"vault public key {path} is malformed ({e}); {_HINT}") from None
    if parts[3] != fingerprint(raw):
        raise IntegrityError(f"vault public key {path} was altered: its fingerprint "
                             f"{parts[3]} does not match the key; restore it from the "
                             "private key or a backup")
    return X25519PublicKey.from_public_bytes(raw)


# --- generation --------------------------------------------------------------------------------

def _make_private_dirs(path: str) -> None:
    """Create missing parent directories of ``path`` with mode 0700."""
    parent = os.path.dirname(os.path.abspath(path))
    missing = []
    while not os.path.isdir(parent):
        missing.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)
        fsync_dir(os.path.dirname(d))


def generate_keypair(public_path: str | os.PathLike[str], private_path: str | os.PathLike[str],
                     passphrase: Secret) -> str:
    """Create a new vault key pair; return its fingerprint.

    Refuses (``UsageError``) if either file exists: replacing a vault key would make every
    entry sealed to the old one unreadable. The private key file is written first, so a crash
    never leaves a public key without its private half (sealing to it would lose evidence).
    """
    pub_path, priv_path = os.fspath(public_path), os.fspath(private_path)
    if os.path.abspath(pub_path) == os.path.abspath(priv_path):
        raise UsageError("the vault public and private key paths must differ")
    for p in (priv_path, pub_path):
        if os.path.lexists(p):
            raise UsageError(f"{p} already exists; fsq never overwrites a vault key (entries "
                             "sealed to it would become unreadable). Move it away first.")
    private_key = X25519PrivateKey.generate()
    doc = _encrypt_private(private_key, passphrase)
    pub_text = public_key_text(private_key.public_key()).encode("ascii")
    try:
        for p in (priv_path, pub_path):
            _make_private_dirs(p)
        write_new_file(priv_path, doc, 0o600)
    except FileExistsError:
        raise UsageError(f"{priv_path} already exists; fsq never overwrites a vault key") \
            from None
    except OSError as e:
        raise ConfigError(f"cannot write vault private key {priv_path}: {e.strerror or e}") \
            from None
    try:
        write_new_file(pub_path, pub_text, 0o644)
    except FileExistsError:
        raise UsageError(f"{pub_path} appeared while the key pair was being created; the new "
                         f"private key is in {priv_path}, move both away and retry") from None
    except OSError as e:
        raise ConfigError(f"cannot write vault public key {pub_path}: {e.strerror or e}; the "
                          f"private key {priv_path} was written, move it away and retry") \
            from None
    return fingerprint(private_key.public_key())
