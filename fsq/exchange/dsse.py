"""DSSE v1 envelopes carrying in-toto Statement v1 verdicts (pure functions, no I/O).

Why DSSE: the signature covers the exact payload bytes through the pre-authentication
encoding (PAE), so nothing has to be canonicalised before verifying, and the payload type is
signed too (a statement cannot be replayed as some other kind of document)::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

(LEN = decimal byte length, SP = one space). The envelope::

    {"payloadType": "application/vnd.in-toto+json",
     "payload": base64(statement JSON),
     "signatures": [{"keyid": sha256-hex(raw Ed25519 public key), "sig": base64(sig)}]}

The statement (in-toto v1)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "sha256:<hex>", "digest": {"sha256": hex, "md5": hex, ["pdq": hex]}}],
     "predicateType": "https://fsq.dev/attestation/verdict/v1",
     "predicate": {"verdict": "safe"|"unsafe"|"unknown", "method": "human"|"model",
                   ["model": {"id", "concepts_digest", "scores"}], "instance": URL,
                   "time": ISO 8601 UTC, "expires": ISO|null, "supersedes": id|null}}

A statement's id is the sha256 of its payload bytes. ``unknown`` with ``supersedes`` is a
revocation. Verification is strict: a field this version does not know is a rejection, not
something ignored, so nothing can ride along unsigned-in-meaning (docs/federation.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fsq.timeutil import iso, parse_iso, utcnow

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://fsq.dev/attestation/verdict/v1"
VERDICTS = ("safe", "unsafe", "unknown")
METHODS = ("human", "model")

MAX_ENVELOPE_BYTES = 16 * 1024   # one JSON line of the feed; a statement is ~1 KiB
MAX_SCORES = 64                  # concept scores carried by a model verdict
CLOCK_SKEW = timedelta(minutes=5)  # "not in the future" tolerates this much

_HEX = {"sha256": 64, "md5": 32, "pdq": 64}
_PREDICATE_KEYS = {"verdict", "method", "model", "instance", "time", "expires", "supersedes"}
_MODEL_KEYS = {"id", "concepts_digest", "scores"}
_HEXRE = re.compile(r"[0-9a-f]+")


class Rejected(Exception):
    """A statement or envelope that must not be used; ``reason`` is recorded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Statement:
    """A verified statement, flattened for storage and policy."""

    id: str
    keyid: str
    sha256: str
    md5: str | None
    pdq: str | None
    verdict: str
    method: str
    instance: str
    time: str
    expires: str | None
    supersedes: str | None
    model: dict[str, Any] | None


# --- primitives --------------------------------------------------------------------------------

def pae(payload_type: str, body: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def raw_public(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> str:
    """The key id everywhere (keys.json, envelopes, `fsq peers add --key`): sha256 hex of the
    raw 32-byte public key."""
    raw = key if isinstance(key, bytes) else raw_public(key)
    return hashlib.sha256(raw).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise Rejected(f"{what} is not a string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Rejected(f"{what} is not valid base64") from None


# --- building ----------------------------------------------------------------------------------

def build_statement(*, sha256: str, md5: str | None, verdict: str, method: str,
                    instance: str, time: str | None = None, expires: str | None = None,
                    supersedes: str | None = None, model: dict[str, Any] | None = None,
                    pdq: str | None = None) -> dict[str, Any]:
    digest = {"sha256": sha256}
    if md5:
        digest["md5"] = md5
    if pdq:
        digest["pdq"] = pdq
    predicate: dict[str, Any] = {"verdict": verdict, "method": method, "instance": instance,
                                 "time": time or iso(), "expires": expires,
                                 "supersedes": supersedes}
    if model is not None:
        predicate["model"] = model
    st = {"_type": STATEMENT_TYPE, "subject": [{"name": f"sha256:{sha256}", "digest": digest}],
          "predicateType": PREDICATE_TYPE, "predicate": predicate}
    validate_statement(st, now=parse_iso(predicate["time"]))  # never sign what we'd refuse
    return st


def sign(statement: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    body = json.dumps(statement, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")
    sig = private_key.sign(pae(PAYLOAD_TYPE, body))
    return {"payloadType": PAYLOAD_TYPE, "payload": b64(body),
            "signatures": [{"keyid": keyid(private_key), "sig": b64(sig)}]}


def statement_id(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


# --- verifying ---------------------------------------------------------------------------------

def _hex(value: Any, n: int, what: str) -> str:
    if not isinstance(value, str) or len(value) != n or not _HEXRE.fullmatch(value):
        raise Rejected(f"{what} is not {n} lowercase hex digits")
    return value


def _time(value: Any, what: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise Rejected(f"{what} is not an ISO 8601 time")
    try:
        return parse_iso(value)
    except ValueError:
        raise Rejected(f"{what} is not an ISO 8601 time") from None


def validate_statement(st: Any, *, now: datetime | None = None) -> dict[str, Any]:
    """Check an in-toto statement's shape and values; return its predicate. Raises
    ``Rejected`` naming the first problem."""
    now = now or utcnow()
    if not isinstance(st, dict) or set(st) != {"_type", "subject", "predicateType",
                                               "predicate"}:
        raise Rejected("not an in-toto statement (fields)")
    if st["_type"] != STATEMENT_TYPE:
        raise Rejected("not an in-toto Statement v1")
    if st["predicateType"] != PREDICATE_TYPE:
        raise Rejected("predicateType is not an fsq verdict")
    subj = st["subject"]
    if not isinstance(subj, list) or len(subj) != 1 or not isinstance(subj[0], dict) \
            or set(subj[0]) != {"name", "digest"}:
        raise Rejected("subject must be exactly one {name, digest}")
    digest = subj[0]["digest"]
    if not isinstance(digest, dict) or "sha256" not in digest or not set(digest) <= set(_HEX):
        raise Rejected("subject digest must hold sha256 (and optionally md5, pdq) only")
    for alg, value in digest.items():
        _hex(value, _HEX[alg], f"subject digest {alg}")
    if subj[0]["name"] != f"sha256:{digest['sha256']}":
        raise Rejected("subject name must be sha256:<digest>")
    p = st["predicate"]
    if not isinstance(p, dict) or not {"verdict", "method", "instance", "time"} <= set(p) \
            or not set(p) <= _PREDICATE_KEYS:
        raise Rejected("predicate has missing or unknown fields")
    if p["verdict"] not in VERDICTS:
        raise Rejected("predicate verdict is not safe, unsafe or unknown")
    if p["method"] not in METHODS:
        raise Rejected("predicate method is not human or model")
    inst = p["instance"]
    if not isinstance(inst, str) or len(inst) > 300 or not inst.startswith(("https://",
                                                                            "http://")):
        raise Rejected("predicate instance is not an http(s) URL")
    t = _time(p["time"], "predicate time")
    if t > now + CLOCK_SKEW:
        raise Rejected("statement time is in the future")
    if p.get("expires") is not None and _time(p["expires"], "predicate expires") <= t:
        raise Rejected("statement expires before it was made")
    if p.get("supersedes") is not None:
        _hex(p["supersedes"], 64, "predicate supersedes")
    if p["verdict"] == "unknown" and p.get("supersedes") is None:
        raise Rejected("an 'unknown' verdict is only used to revoke (supersedes is missing)")
    m = p.get("model")
    if p["method"] == "model":
        if not isinstance(m, dict) or not set(m) <= _MODEL_KEYS or "id" not in m:
            raise Rejected("a model verdict needs model {id, concepts_digest, scores}")
        if not isinstance(m["id"], str) or len(m["id"]) > 200:
            raise Rejected("model id is not a short string")
        if m.get("concepts_digest") is not None and (not isinstance(m["concepts_digest"], str)
                                                     or len(m["concepts_digest"]) > 100):
            raise Rejected("model concepts_digest is not a short string")
        sc = m.get("scores", {})
        if not isinstance(sc, dict) or len(sc) > MAX_SCORES or not all(
                isinstance(k, str) and len(k) <= 100 and type(v) in (int, float)
                for k, v in sc.items()):
            raise Rejected("model scores must be a small {concept: number} map")
    elif m is not None:
        raise Rejected("a human verdict carries no model")
    return p


def verify(envelope: Any, public_key: Ed25519PublicKey, *, now: datetime | None = None
           ) -> Statement:
    """Verify one envelope against the one pinned key. Order: shape, key id, signature over
    the PAE of the exact payload bytes, then the statement's content. ``Rejected`` names the
    reason (recorded by the caller)."""
    if not isinstance(envelope, dict) or set(envelope) != {"payloadType", "payload",
                                                           "signatures"}:
        raise Rejected("not a DSSE envelope (fields)")
    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise Rejected("payloadType is not in-toto JSON")
    sigs = envelope["signatures"]
    if not isinstance(sigs, list) or not 1 <= len(sigs) <= 4:
        raise Rejected("envelope needs 1 to 4 signatures")
    pinned = keyid(public_key)
    body = unb64(envelope["payload"], "payload")
    if len(body) > MAX_ENVELOPE_BYTES:
        raise Rejected("payload too large")
    ours = [s for s in sigs if isinstance(s, dict) and s.get("keyid") == pinned]
    if not ours:
        raise Rejected("not signed by the pinned key (a changed key must be re-added with "
                       "`fsq peers add`)")
    sig = unb64(ours[0].get("sig"), "signature")
    try:
        public_key.verify(sig, pae(PAYLOAD_TYPE, body))
    except InvalidSignature:
        raise Rejected("bad signature (altered in transit or not made by the pinned key)") \
            from None
    try:
        st = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejected("payload is not JSON") from None
    p = validate_statement(st, now=now)
    d = st["subject"][0]["digest"]
    return Statement(id=statement_id(body), keyid=pinned, sha256=d["sha256"], md5=d.get("md5"),
                     pdq=d.get("pdq"), verdict=p["verdict"], method=p["method"],
                     instance=p["instance"], time=iso(parse_iso(p["time"])),
                     expires=iso(parse_iso(p["expires"])) if p.get("expires") else None,
                     supersedes=p.get("supersedes"), model=p.get("model"))


def public_key_from_b64(text: Any) -> Ed25519PublicKey:
    raw = unb64(text, "public key")
    if len(raw) != 32:
        raise Rejected("public key is not 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)
