"""Sealing format of vault entries, version 1.

One quarantined file is one *entry* with a random id (32 hex digits, ``new_entry_id()``) and
two opaque objects in the vault store:

* ``<id>.key``  - a fresh random 32-byte data key, wrapped to the vault public key;
* ``<id>.blob`` - the metadata and the content, each encrypted under the data key.

Crypto-shredding: deleting ``<id>.key`` makes ``<id>.blob`` undecipherable, including every
copy of the blob that survives in backups or object versions. (Copies of the *key* object in
backups defeat that, so back up ``.key`` objects with the same retention as the blobs, or not
at all.)

Construction (suite 1): AES-256-GCM everywhere, X25519 + HKDF-SHA256 for the key wrap::

    data_key  = random 32 bytes
    meta_ct   = AES-GCM(data_key, meta_nonce, metadata_json,
                        aad = "fsq-vault-v1 metadata\\0" || blob_header)
    content_ct= AES-GCM(data_key, content_nonce, content,
                        aad = "fsq-vault-v1 content\\0" || blob_header || SHA256(metadata_json))
    eph       = fresh X25519 key pair
    kek       = HKDF-SHA256(X25519(eph, vault_pub), salt = none,
                            info = "fsq-vault-v1 wrap\\0" || entry_id(16) || eph_pub || vault_pub)
    wrapped   = AES-GCM(kek, wrap_nonce, data_key, aad = key_object[0:88])

``metadata_json`` is canonical JSON (sorted keys, no spaces, UTF-8) of the caller's dict; this
module does not interpret it. Nonces are random 96-bit values; each data key and each kek is
used for one entry only. The headers carry the entry id, so an object renamed to another id,
a ``.key`` from another entry, content paired with other metadata, or any flipped, cut or
appended byte fails authentication.

Common header (24 bytes)::

    offset size  field
    0      4     magic b"FSQV"
    4      1     format version = 1
    5      1     object kind: b"B" (blob) or b"K" (key)
    6      1     suite = 1 (X25519, HKDF-SHA256, AES-256-GCM)
    7      1     reserved = 0
    8      16    entry id (the 32 hex digits as raw bytes)

Blob object (``<id>.blob``), all integers big-endian::

    offset    size  field
    0         24    header (kind b"B")
    24        12    metadata nonce
    36        4     M = metadata ciphertext length incl. 16-byte tag (uint32)
    40        M     metadata ciphertext || tag
    40+M      12    content nonce
    52+M      8     C = content ciphertext length incl. 16-byte tag (uint64)
    60+M      C     content ciphertext || tag          (total size exactly 60 + M + C)

Key object (``<id>.key``), 148 bytes::

    offset  size  field
    0       24    header (kind b"K")
    24      32    vault (recipient) X25519 public key
    56      32    ephemeral X25519 public key
    88      12    wrap nonce
    100     48    wrapped data key (32) || tag (16)

What someone holding the vault but not the private key learns: how many entries there are,
each object's size (content size exactly = C - 16; metadata size approximately = M - 16, which
hints at the length of the original path), object times from the store, and the (public)
vault key each entry was sealed to. Not the content, its hashes, the original path, the
source or the verdict.

Size limit: content is encrypted in one AES-GCM call, so it is limited to
``MAX_CONTENT_BYTES`` (2 GiB - 17 bytes, the ``cryptography`` per-call limit minus the tag);
pict-rs uploads are far smaller. Peak memory while sealing is about three times the content
(input, ciphertext, assembled blob), while opening about twice (the blob, the plaintext;
sections are decrypted through memoryviews, not copied). A streaming, chunked format would be
version 2.

``open_sealed`` and ``open_metadata`` raise ``fsq.errors.IntegrityError`` naming the entry id
for every failure; no ``cryptography`` exception escapes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fsq.errors import IntegrityError, UsageError
from fsq.quarantine.keys import fingerprint, raw_public

MAGIC = b"FSQV"
VERSION = 1
SUITE = 1
KIND_BLOB = b"B"
KIND_KEY = b"K"
HEADER_LEN = 24
KEY_OBJECT_LEN = 148
TAG_LEN = 16
NONCE_LEN = 12
MAX_CONTENT_BYTES = 2 ** 31 - 1 - TAG_LEN
MAX_METADATA_BYTES = 16 * 1024 * 1024

_AAD_META = b"fsq-vault-v1 metadata\0"
_AAD_CONTENT = b"fsq-vault-v1 content\0"
_WRAP_INFO = b"fsq-vault-v1 wrap\0"
_ID_RE = re.compile(r"[0-9a-f]{32}")


def new_entry_id() -> str:
    """A fresh random entry id: 32 lowercase hex digits (128 bits)."""
    return secrets.token_hex(16)


def blob_name(entry_id: str) -> str:
    return f"{entry_id}.blob"


def key_name(entry_id: str) -> str:
    return f"{entry_id}.key"


def canonical_json(metadata: dict[str, Any]) -> bytes:
    """The exact metadata bytes that get sealed (sorted keys, no spaces, UTF-8)."""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _header(kind: bytes, entry_id: str) -> bytes:
    return MAGIC + bytes((VERSION,)) + kind + bytes((SUITE, 0)) + bytes.fromhex(entry_id)


@dataclass(frozen=True)
class Sealed:
    """The two objects of one sealed entry, with their SHA-256 (hex) for the ledger."""

    entry_id: str
    blob: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)
    blob_sha256: str
    key_sha256: str


def _kek(entry_id: str, shared: bytes, eph_pub: bytes, vault_pub: bytes) -> bytes:
    info = _WRAP_INFO + bytes.fromhex(entry_id) + eph_pub + vault_pub
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)


def seal(entry_id: str, content: bytes, metadata: dict[str, Any],
         public_key: X25519PublicKey) -> Sealed:
    """Seal ``content`` and ``metadata`` for the holder of the vault private key.

    Needs only the public key. ``metadata`` must be JSON-serialisable (``TypeError`` /
    ``ValueError`` otherwise).
    """
    return _seal(entry_id, content, metadata, public_key, AESGCM.generate_key(256))


def _seal(entry_id: str, content: bytes, metadata: dict[str, Any],
          public_key: X25519PublicKey, data_key: bytes) -> Sealed:
    # Split out so tests can fix the data key and prove the AAD bindings; production code
    # must call seal(): a data key must never be used for two entries.
    if not isinstance(entry_id, str) or not _ID_RE.fullmatch(entry_id):
        raise UsageError(f"invalid vault entry id {entry_id!r}; use new_entry_id()")
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be a dict")
    if not isinstance(public_key, X25519PublicKey):
        raise TypeError("public_key must be an X25519PublicKey (see fsq.quarantine.keys)")
    if len(content) > MAX_CONTENT_BYTES:
        raise UsageError(f"file of {len(content)} bytes is larger than the vault format "
                         f"allows ({MAX_CONTENT_BYTES} bytes)")
    meta = canonical_json(metadata)
    if len(meta) > MAX_METADATA_BYTES:
        raise UsageError(f"metadata of {len(meta)} bytes exceeds {MAX_METADATA_BYTES}")

    aead = AESGCM(data_key)
    meta_nonce = os.urandom(NONCE_LEN)
    content_nonce = os.urandom(NONCE_LEN)
    while content_nonce == meta_nonce:  # astronomically unlikely; never reuse under one key
        content_nonce = os.urandom(NONCE_LEN)

    bh = _header(KIND_BLOB, entry_id)
    meta_ct = aead.encrypt(meta_nonce, meta, _AAD_META + bh)
    content_ct = aead.encrypt(content_nonce, content,
                              _AAD_CONTENT + bh + hashlib.sha256(meta).digest())
    blob = b"".join((bh, meta_nonce, struct.pack(">I", len(meta_ct)), meta_ct,
                     content_nonce, struct.pack(">Q", len(content_ct)), content_ct))
    del content_ct

    vault_pub = raw_public(public_key)
    eph = X25519PrivateKey.generate()
    eph_pub = raw_public(eph)
    kek = _kek(entry_id, eph.exchange(public_key), eph_pub, vault_pub)
    wrap_nonce = os.urandom(NONCE_LEN)
    prefix = _header(KIND_KEY, entry_id) + vault_pub + eph_pub + wrap_nonce
    wrapped_key = prefix + AESGCM(kek).encrypt(wrap_nonce, data_key, prefix[:88])
    assert len(wrapped_key) == KEY_OBJECT_LEN

    return Sealed(entry_id=entry_id, blob=blob, wrapped_key=wrapped_key,
                  blob_sha256=hashlib.sha256(blob).hexdigest(),
                  key_sha256=hashlib.sha256(wrapped_key).hexdigest())


# --- opening -----------------------------------------------------------------------------------

def _fail(entry_id: str, what: str) -> IntegrityError:
    return IntegrityError(f"vault entry {entry_id}: {what}")


def _check_header(entry_id: str, data: memoryview, kind: bytes, label: str) -> None:
    if len(data) < HEADER_LEN:
        raise _fail(entry_id, f"{label} object is truncated ({len(data)} bytes)")
    if bytes(data[0:4]) != MAGIC:
        raise _fail(entry_id, f"{label} object is not an fsq vault object (bad magic)")
    if data[4] != VERSION:
        raise _fail(entry_id, f"{label} object has format version {data[4]}; this fsq reads "
                              f"version {VERSION} (upgrade fsq?)")
    if bytes(data[5:6]) != kind:
        raise _fail(entry_id, f"{label} object has the wrong kind")
    if data[6] != SUITE or data[7] != 0:
        raise _fail(entry_id, f"{label} object has unknown cipher suite {data[6]}")
    if bytes(data[8:24]) != bytes.fromhex(entry_id):
        raise _fail(entry_id, f"{label} object belongs to entry {bytes(data[8:24]).hex()}, "
                              "not to this one")


def _check_id(entry_id: Any) -> str:
    if not isinstance(entry_id, str) or not _ID_RE.fullmatch(entry_id):
        raise IntegrityError(f"invalid vault entry id {entry_id!r}")
    return entry_id


def _unwrap(entry_id: str, wrapped_key: bytes, private_key: X25519PrivateKey) -> bytes:
    if not isinstance(private_key, X25519PrivateKey):
        raise TypeError("private_key must be an X25519PrivateKey (see fsq.quarantine.keys)")
    k = memoryview(wrapped_key)
    if len(k) != KEY_OBJECT_LEN:
        # Check the header first for a clearer message (another version, another entry).
        _check_header(entry_id, k, KIND_KEY, "key")
        raise _fail(entry_id, f"key object has {len(k)} bytes, expected {KEY_OBJECT_LEN} "
                              "(truncated or extended)")
    _check_header(entry_id, k, KIND_KEY, "key")
    vault_pub = bytes(k[24:56])
    mine = raw_public(private_key)
    if vault_pub != mine:
        raise _fail(entry_id, f"sealed to vault key {fingerprint(vault_pub)}, but the private "
                              f"key given is {fingerprint(mine)} (wrong vault key, or the key "
                              "object is damaged)")
    eph_pub = bytes(k[56:88])
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        kek = _kek(entry_id, shared, eph_pub, vault_pub)
        data_key = AESGCM(kek).decrypt(k[88:100], k[100:], k[0:88])
    except (InvalidTag, ValueError):
        raise _fail(entry_id, "cannot unwrap the data key: the key object is damaged, "
                              "altered or from another entry") from None
    return data_key


def _meta_section(entry_id: str, b: memoryview) -> tuple[memoryview, memoryview, int]:
    """(nonce, ciphertext, end offset) of the metadata section."""
    _check_header(entry_id, b, KIND_BLOB, "blob")
    if len(b) < 40:
        raise _fail(entry_id, "blob object is truncated")
    (m,) = struct.unpack(">I", b[36:40])
    if m < TAG_LEN or m > MAX_METADATA_BYTES + TAG_LEN or 40 + m > len(b):
        raise _fail(entry_id, "blob object is truncated or its metadata length is corrupt")
    return b[24:36], b[40:40 + m], 40 + m


def _decrypt_meta(entry_id: str, aead: AESGCM, b: memoryview) -> tuple[bytes, int]:
    nonce, ct, end = _meta_section(entry_id, b)
    try:
        meta = aead.decrypt(nonce, ct, _AAD_META + bytes(b[0:24]))
    except InvalidTag:
        raise _fail(entry_id, "metadata does not authenticate: the blob is damaged, altered, "
                              "or does not belong to this key object") from None
    return meta, end


def _parse_meta(entry_id: str, meta: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        obj = None
    if not isinstance(obj, dict):
        raise _fail(entry_id, "authenticated metadata is not a JSON object")
    return obj


def open_metadata(entry_id: str, blob: bytes, wrapped_key: bytes,
                  private_key: X25519PrivateKey) -> dict[str, Any]:
    """Decrypt only the metadata (for listing and review without touching the content).

    Authenticates the key object and the metadata section; the content section is neither
    decrypted nor checked (``blob`` may even be just its first 40 + M bytes).
    """
    entry_id = _check_id(entry_id)
    aead = AESGCM(_unwrap(entry_id, wrapped_key, private_key))
    meta, _ = _decrypt_meta(entry_id, aead, memoryview(blob))
    return _parse_meta(entry_id, meta)


def open_sealed(entry_id: str, blob: bytes, wrapped_key: bytes,
                private_key: X25519PrivateKey) -> tuple[dict[str, Any], bytes]:
    """Decrypt and authenticate a whole entry; return ``(metadata, content)``."""
    entry_id = _check_id(entry_id)
    aead = AESGCM(_unwrap(entry_id, wrapped_key, private_key))
    b = memoryview(blob)
    meta, off = _decrypt_meta(entry_id, aead, b)
    if off + 20 > len(b):
        raise _fail(entry_id, "blob object is truncated (no content section)")
    nonce = b[off:off + 12]
    (c,) = struct.unpack(">Q", b[off + 12:off + 20])
    start = off + 20
    if c < TAG_LEN or start + c != len(b):
        raise _fail(entry_id, f"blob object is truncated or extended ({len(b)} bytes, "
                              f"header says {start + c})")
    try:
        content = aead.decrypt(nonce, b[start:],
                               _AAD_CONTENT + bytes(b[0:24]) + hashlib.sha256(meta).digest())
    except InvalidTag:
        raise _fail(entry_id, "content does not authenticate: the blob is damaged or "
                              "altered") from None
    return _parse_meta(entry_id, meta), content
