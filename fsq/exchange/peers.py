"""Trusted peers: pinned keys, bounded pulls, verification, offline import.

Trust is explicit and narrow. A peer is a URL plus ONE Ed25519 key pinned when the admin adds
it (`fsq peers add URL --key KEYID`: the key id is compared with what the peer publishes, so
it must come from the peer's admin over another channel). Every statement is verified against
that pinned key only; a peer that changes its key is refused until it is re-added.

What a hostile or broken peer can do, and what happens (tests/test_exchange_hostile.py):

* a response larger than ``max_bytes``, with more than ``max_statements`` records, not JSON
  lines, without its end record, or with cursors that go backwards: the whole page is refused,
  recorded in ``peer_rejections`` and ``peers.last_error``; the cursor does not move, so the
  next pull resumes where the last good page ended;
* a statement that fails verification (bad signature, other key, malformed subject, a time in
  the future, expired, a replay of a statement already revoked, older than the peer's current
  statement about the same content): that statement is recorded with its reason and skipped;
  the rest of the page is used;
* the peer is down or answers an error status: recorded, ``ExternalError`` (exit 3).

Nothing a peer sends is ever executed, rendered or stored beyond the verified envelope.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable
from urllib.parse import urlsplit

from fsq.errors import ExternalError, NotFound, UsageError
from fsq.exchange import dsse
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.timeutil import iso, utcnow

log = logging.getLogger("fsq.exchange")

KEYS_PATH = "/.well-known/fsq/keys.json"
FEED_PATH = "/.well-known/fsq/attestations"
MAX_PAGES_PER_PULL = 100


@dataclass(frozen=True)
class PullLimits:
    max_bytes: int = 8 * 1024 * 1024
    max_statements: int = 1000
    timeout: float = 10.0


class PageRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_url(url: str) -> str:
    """https://host[:port][/path] without a trailing slash; no credentials, query or
    fragment (a peer URL is an identity, compared as text)."""
    u = url.strip()
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"peer URL {url!r} must be http(s)://host[:port][/path]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UsageError("a peer URL carries no credentials, query or fragment")
    return f"{parts.scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


# --- HTTP (bounded) ----------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a: Any, **k: Any) -> None:  # a peer answers at its own URL
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def fetch(url: str, limits: PullLimits) -> bytes:
    """GET ``url``; at most ``limits.max_bytes`` (PageRefused beyond). Network failures and
    error statuses are ExternalError."""
    req = urllib.request.Request(url, headers={"Accept": "application/x-ndjson, "
                                               "application/json", "User-Agent": "fsq"})
    try:
        with _opener.open(req, timeout=limits.timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limits.max_bytes:
                raise PageRefused(f"response of {length} bytes exceeds the limit of "
                                  f"{limits.max_bytes} (FSQ_PEERS_MAX_RESPONSE_BYTES)")
            data = resp.read(limits.max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise ExternalError(f"{_host(url)} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ExternalError(f"cannot reach {_host(url)}: {reason}") from None
    if len(data) > limits.max_bytes:
        raise PageRefused(f"response exceeds the limit of {limits.max_bytes} bytes "
                          "(FSQ_PEERS_MAX_RESPONSE_BYTES)")
    return data


def _host(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


# --- peers -------------------------------------------------------------------------------------

def get_peer(conn: sqlite3.Connection, url: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM peers WHERE url=?", (normalise_url(url),)).fetchone()
    if row is None:
        raise NotFound(f"no peer {url}; list them with `fsq peers list`")
    return row


def find_key(doc: Any, key_id: str) -> str:
    """The base64 public key with id ``key_id`` from a keys.json document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise UsageError("the peer's keys.json is not an fsq keys document")
    for k in doc["keys"][:16]:
        if isinstance(k, dict) and k.get("keyid") == key_id and k.get("algorithm") == "ed25519":
            try:
                pub = dsse.public_key_from_b64(k.get("public_key"))
            except dsse.Rejected as e:
                raise UsageError(f"the peer's key {key_id[:16]} is malformed: {e.reason}") \
                    from None
            if dsse.keyid(pub) != key_id:
                raise UsageError(f"the peer's key does not hash to {key_id}; refused")
            return k["public_key"]
    raise UsageError(f"the peer does not publish key {key_id}; check the key id with its "
                     "admin (`fsq attest key` on their side)")


def add_peer(conn: sqlite3.Connection, url: str, key_id: str, *,
             keys_doc: Any | None = None, limits: PullLimits = PullLimits()) -> dict[str, Any]:
    """Pin ``key_id`` for ``url``. The public key comes from the peer's keys.json (or from
    ``keys_doc``, e.g. the header of an export file). Re-adding a URL replaces its pin."""
    url = normalise_url(url)
    kid = key_id.strip().lower()
    if len(kid) != 64 or any(c not in "0123456789abcdef" for c in kid):
        raise UsageError("--key is the peer's key id: 64 hex digits (sha256 of its public key)")
    if keys_doc is None:
        try:
            keys_doc = json.loads(fetch(url + KEYS_PATH, PullLimits(64 * 1024, 1,
                                                                    limits.timeout)))
        except (PageRefused, ValueError, RecursionError):
            raise UsageError(f"{url}{KEYS_PATH} is not an fsq keys document") from None
    pub = find_key(keys_doc, kid)
    with transaction(conn):
        old = conn.execute("SELECT * FROM peers WHERE url=?", (url,)).fetchone()
        if old is None:
            conn.execute("INSERT INTO peers (url, keyid, public_key, added_at) VALUES (?,?,?,?)",
                         (url, kid, pub, iso()))
        else:
            conn.execute("UPDATE peers SET keyid=?, public_key=?, last_error=NULL WHERE id=?",
                         (kid, pub, old["id"]))
        audit.append(conn, "peer.added" if old is None else "peer.key_changed", f"peer:{url}",
                     {"url": url, "keyid": kid,
                      **({"previous_keyid": old["keyid"]} if old is not None else {})})
    return {"url": url, "keyid": kid, "replaced": old is not None and old["keyid"] != kid}


def remove_peer(conn: sqlite3.Connection, url: str) -> dict[str, Any]:
    """Forget a peer and its statements (they stop applying at once)."""
    row = get_peer(conn, url)
    with transaction(conn):
        n = conn.execute("SELECT COUNT(*) FROM peer_statements WHERE peer_id=?",
                         (row["id"],)).fetchone()[0]
        conn.execute("DELETE FROM peers WHERE id=?", (row["id"],))
        audit.append(conn, "peer.removed", f"peer:{row['url']}",
                     {"url": row["url"], "keyid": row["keyid"], "statements": n})
    return {"url": row["url"], "statements_dropped": n}


def list_peers(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    out = []
    for p in conn.execute("SELECT * FROM peers ORDER BY url"):
        c = conn.execute(
            "SELECT COUNT(*), SUM(verdict='safe' AND revoked_by IS NULL), "
            "SUM(verdict='unsafe' AND revoked_by IS NULL), SUM(revoked_by IS NOT NULL) "
            "FROM peer_statements WHERE peer_id=?", (p["id"],)).fetchone()
        rej = conn.execute("SELECT COUNT(*) FROM peer_rejections WHERE peer_id=?",
                           (p["id"],)).fetchone()[0]
        out.append({"url": p["url"], "keyid": p["keyid"], "added_at": p["added_at"],
                    "cursor": p["cursor"], "last_pull_at": p["last_pull_at"],
                    "last_ok_at": p["last_ok_at"], "last_error": p["last_error"],
                    "statements": c[0], "safe": c[1] or 0, "unsafe": c[2] or 0,
                    "revoked": c[3] or 0, "rejected": rej})
    return out


def rejections(conn: sqlite3.Connection, url: str | None = None, limit: int = 100
               ) -> list[dict[str, Any]]:
    sql = ("SELECT r.*, p.url FROM peer_rejections r LEFT JOIN peers p ON p.id=r.peer_id")
    args: tuple = ()
    if url:
        sql += " WHERE p.url=?"
        args = (normalise_url(url),)
    return [{"url": r["url"], "at": r["at"], "reason": r["reason"], "cursor": r["cursor"],
             "statement": r["statement_id"], "data_sha256": r["data_sha256"]}
            for r in conn.execute(sql + " ORDER BY r.id DESC LIMIT ?", (*args, limit))]


def _reject(conn: sqlite3.Connection, peer_id: int, reason: str, *, cursor: str | None = None,
            statement: str | None = None, data: bytes | None = None) -> None:
    conn.execute("INSERT INTO peer_rejections (peer_id, at, reason, cursor, statement_id, "
                 "data_sha256) VALUES (?,?,?,?,?,?)",
                 (peer_id, iso(), reason[:300], cursor, statement,
                  hashlib.sha256(data).hexdigest() if data is not None else None))


# --- ingesting ---------------------------------------------------------------------------------

def ingest(conn: sqlite3.Connection, peer: sqlite3.Row, envelope: Any, *, via: str,
           cursor: str | None = None, now: datetime | None = None) -> str:
    """Verify one envelope and store it. Returns 'accepted' | 'duplicate' | 'rejected' (the
    reason is recorded). Call inside a transaction."""
    now = now or utcnow()
    raw = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
    try:
        st = dsse.verify(envelope, dsse.public_key_from_b64(peer["public_key"]), now=now)
        if st.expires is not None and st.expires <= iso(now):
            raise dsse.Rejected("statement has expired")
        known = conn.execute("SELECT * FROM peer_statements WHERE peer_id=? AND "
                             "statement_id=?", (peer["id"], st.id)).fetchone()
        if known is not None:
            # The same statement at its own place in the feed (a --restart pull, an export
            # imported twice) is a duplicate; served again at a new place after its
            # revocation it is a replay. Either way it cannot un-revoke anything.
            moved = cursor is not None and known["cursor"] not in (None, cursor)
            if known["revoked_by"] is not None and moved:
                raise dsse.Rejected(f"replay of a statement revoked by "
                                    f"{known['revoked_by'][:16]}")
            return "duplicate"
        later = conn.execute("SELECT statement_id FROM peer_statements WHERE peer_id=? AND "
                             "supersedes=?", (peer["id"], st.id)).fetchone()
        if later is not None:
            raise dsse.Rejected(f"replay of a statement revoked by {later[0][:16]}")
        newer = conn.execute("SELECT statement_id FROM peer_statements WHERE peer_id=? AND "
                             "sha256=? AND time > ? LIMIT 1",
                             (peer["id"], st.sha256, st.time)).fetchone()
        if newer is not None:
            raise dsse.Rejected(f"older than the peer's current statement {newer[0][:16]} "
                                "about this content (replay)")
    except dsse.Rejected as e:
        _reject(conn, peer["id"], e.reason, cursor=cursor, data=raw,
                statement=_maybe_id(envelope))
        return "rejected"
    conn.execute(
        "INSERT INTO peer_statements (peer_id, statement_id, sha256, md5, verdict, method, "
        "time, expires, supersedes, received_at, via, cursor, envelope) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (peer["id"], st.id, st.sha256, st.md5, st.verdict, st.method, st.time, st.expires,
         st.supersedes, iso(now), via, cursor, raw.decode()))
    if st.supersedes is not None:
        conn.execute("UPDATE peer_statements SET revoked_by=? WHERE peer_id=? AND "
                     "statement_id=?", (st.id, peer["id"], st.supersedes))
        _stop_applying(conn, st.sha256, st.supersedes)
    return "accepted"


def _maybe_id(envelope: Any) -> str | None:
    try:
        return dsse.statement_id(dsse.unb64(envelope["payload"], "payload"))
    except Exception:
        return None


def _stop_applying(conn: sqlite3.Connection, sha256: str, statement_id: str) -> None:
    """Objects whose verdict came from a statement that is now revoked are looked at again by
    the next scan (their status goes back to pending; a quarantined one stays in the vault for
    a person to decide)."""
    conn.execute(
        "UPDATE objects SET status='pending', reason='peer attestation revoked; scan again' "
        "WHERE sha256=? AND status IN ('clean','review') AND verdict_id IN (SELECT id FROM "
        "verdicts WHERE sha256=? AND method='attestation' AND "
        "json_extract(details, '$.statement') = ?)", (sha256, sha256, statement_id))


def parse_page(data: bytes, since: int, limits: PullLimits) -> tuple[list[tuple[str, Any]],
                                                                      int, bool]:
    """Split a feed response into (cursor, envelope) records, the end cursor and ``more``.
    Any structural problem refuses the whole page."""
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    if not lines:
        raise PageRefused("empty response (no end record)")
    if len(lines) > limits.max_statements + 1:
        raise PageRefused(f"response holds more than {limits.max_statements} statements "
                          "(FSQ_PEERS_MAX_STATEMENTS)")
    recs: list[tuple[str, Any]] = []
    last = since
    end: dict[str, Any] | None = None
    for n, line in enumerate(lines, 1):
        if len(line) > dsse.MAX_ENVELOPE_BYTES * 2:
            raise PageRefused(f"line {n} is longer than a statement can be")
        try:
            obj = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise PageRefused(f"line {n} is not JSON") from None
        if end is not None:
            raise PageRefused("data after the end record")
        if not isinstance(obj, dict):
            raise PageRefused(f"line {n} is not a JSON object")
        c = obj.get("cursor")
        if not isinstance(c, str) or not c.isdigit() or len(c) > 18:
            raise PageRefused(f"line {n} has no valid cursor")
        if obj.get("end") is True:
            if int(c) < last or not isinstance(obj.get("more"), bool):
                raise PageRefused("bad end record (cursor went backwards or no 'more')")
            end = obj
            continue
        if set(obj) != {"cursor", "dsse"}:
            raise PageRefused(f"line {n} is neither a statement record nor the end record")
        if int(c) <= last:
            raise PageRefused(f"line {n}: cursor went backwards")
        last = int(c)
        recs.append((c, obj["dsse"]))
    if end is None:
        raise PageRefused("response is truncated (no end record)")
    return recs, int(end["cursor"]), bool(end["more"]) and bool(recs)


def pull(conn: sqlite3.Connection, url: str, *, limits: PullLimits = PullLimits(),
         restart: bool = False, now: datetime | None = None) -> dict[str, Any]:
    """Fetch new statements from one peer, page by page from its stored cursor. Each page is
    stored with the new cursor in one transaction, so a failure resumes after the last good
    page. Raises ExternalError (after recording it) when the peer fails or misbehaves."""
    peer = get_peer(conn, url)
    since = 0 if restart else int(peer["cursor"])
    res = {"url": peer["url"], "accepted": 0, "duplicate": 0, "rejected": 0, "pages": 0,
           "cursor": str(since)}
    data: bytes | None = None
    try:
        for _ in range(MAX_PAGES_PER_PULL):
            data = None
            data = fetch(f"{peer['url']}{FEED_PATH}?since={since}&limit={limits.max_statements}",
                         limits)
            recs, cursor, more = parse_page(data, since, limits)
            with transaction(conn):
                for c, env in recs:
                    res[ingest(conn, peer, env, via="pull", cursor=c, now=now)] += 1
                conn.execute("UPDATE peers SET cursor=?, last_pull_at=?, last_ok_at=?, "
                             "last_error=NULL WHERE id=?",
                             (str(cursor), iso(), iso(), peer["id"]))
            res["pages"] += 1
            since = cursor
            res["cursor"] = str(cursor)
            if not more:
                break
    except (PageRefused, ExternalError) as e:
        reason = e.reason if isinstance(e, PageRefused) else e.message
        with transaction(conn):
            if isinstance(e, PageRefused):
                _reject(conn, peer["id"], f"response refused: {reason}", cursor=str(since),
                        data=data)
            conn.execute("UPDATE peers SET last_pull_at=?, last_error=? WHERE id=?",
                         (iso(), reason[:300], peer["id"]))
            audit.append(conn, "peer.pull_failed", f"peer:{peer['url']}",
                         {"reason": reason[:300], "cursor": str(since), **_counts(res)})
        raise ExternalError(f"pull from {peer['url']} failed: {reason}; what was received "
                            f"before is kept, the next pull resumes at cursor {since}") from None
    if res["accepted"] or res["rejected"]:
        with transaction(conn):
            audit.append(conn, "peer.pulled", f"peer:{peer['url']}",
                         {"cursor": res["cursor"], **_counts(res)})
    return res


def _counts(res: dict[str, Any]) -> dict[str, int]:
    return {k: res[k] for k in ("accepted", "duplicate", "rejected")}


def pull_all(conn: sqlite3.Connection, limits: PullLimits = PullLimits(), *,
             restart: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Pull every peer; one failing peer does not stop the others. (results, failures)"""
    done, failed = [], []
    for p in conn.execute("SELECT url FROM peers ORDER BY url").fetchall():
        try:
            done.append(pull(conn, p["url"], limits=limits, restart=restart))
        except ExternalError as e:
            failed.append({"url": p["url"], "error": e.message})
    return done, failed


def import_lines(conn: sqlite3.Connection, lines: Iterable[bytes], *,
                 limits: PullLimits = PullLimits()) -> dict[str, Any]:
    """Import an `fsq attest export` file. Its header names the signing key; the key must be
    pinned for an existing peer (an export does not make anyone trusted)."""
    it = iter(lines)
    try:
        header = json.loads(next(it))
    except (StopIteration, ValueError, UnicodeDecodeError, RecursionError):
        raise UsageError("not an fsq attestation export (no header line)") from None
    if not isinstance(header, dict) or header.get("fsq_export") != 1:
        raise UsageError("not an fsq attestation export (bad header)")
    kids = [k.get("keyid") for k in (header.get("keys") or {}).get("keys", [])[:16]
            if isinstance(k, dict)]
    peer = None
    for kid in kids:
        peer = conn.execute("SELECT * FROM peers WHERE keyid=?", (kid,)).fetchone()
        if peer is not None:
            break
    if peer is None:
        raise UsageError("the export is signed by a key no peer has pinned; add the instance "
                         "first: fsq peers add URL --key KEYID --keys-file THIS_FILE")
    res = {"url": peer["url"], "accepted": 0, "duplicate": 0, "rejected": 0}
    with transaction(conn):
        for n, line in enumerate(it, 2):
            if len(line) > dsse.MAX_ENVELOPE_BYTES * 2:
                _reject(conn, peer["id"], f"import line {n} too long", data=line)
                res["rejected"] += 1
                continue
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError, RecursionError):
                obj = None
            if isinstance(obj, dict) and obj.get("end") is True:
                continue
            if not isinstance(obj, dict) or "dsse" not in obj:
                _reject(conn, peer["id"], f"import line {n} is not a statement record",
                        data=line)
                res["rejected"] += 1
                continue
            res[ingest(conn, peer, obj["dsse"], via="import", cursor=None)] += 1
        audit.append(conn, "peer.imported", f"peer:{peer['url']}", _counts(res))
    return res


def keys_doc_from_export(first_line: bytes) -> Any:
    try:
        header = json.loads(first_line)
        return header["keys"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise UsageError("not an fsq attestation export (no keys in the header)") from None
