"""The scanner's trust check: may a peer's statement decide about this content?

Called by fsq.pipeline.precheck after the allowlist and the hash lists, before the verdict
cache and before any decoding. Rules (docs/federation.md, "Trust model"):

* only statements of peers still configured, not revoked, not expired, about the exact
  sha256; per peer only its newest statement about the content counts;
* a local human decision always wins: content released here is already allowlisted (checked
  before this), and content a person here confirmed (reported, or decided unsafe in the
  console) is never cleared by a peer;
* ``unsafe`` beats ``safe`` when peers disagree;
* ``unsafe`` (FSQ_TRUST_UNSAFE): ``review`` flags the content for a person with priority and
  never quarantines by itself; ``quarantine`` quarantines like a model flag, but only on a
  HUMAN unsafe statement (a peer's model verdict still only asks for review); ``off`` ignores;
* ``safe`` (FSQ_TRUST_SAFE=peers): a HUMAN safe statement records the content clean without
  the model (method ``attestation``, naming the peer). A peer's model verdict never skips ours.

``decide`` is the pure rule over plain rows; ``TrustPolicy`` adds the one indexed query.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

from fsq.ledger.state import VerdictRecord
from fsq.timeutil import iso

METHOD = "attestation"


@dataclass(frozen=True)
class PeerClaim:
    url: str
    keyid: str
    statement: str
    verdict: str     # safe | unsafe
    method: str      # human | model
    time: str


def decide(claims: Sequence[PeerClaim], *, safe: str, unsafe: str,
           local_human: bool) -> VerdictRecord | None:
    """The verdict peer claims give under the policy, or None (scan normally)."""
    if local_human or not claims:
        return None
    bad = [c for c in claims if c.verdict == "unsafe"]
    if bad and unsafe != "off":
        human = [c for c in bad if c.method == "human"]
        c = (human or bad)[0]
        quarantine = unsafe == "quarantine" and bool(human)
        who = ", ".join(sorted({b.url for b in bad}))
        return VerdictRecord(
            "flagged", METHOD,
            f"peer {who}: unsafe by {c.method} review; "
            + ("quarantined by FSQ_TRUST_UNSAFE=quarantine" if quarantine
               else "queued for review (not quarantined)"),
            details={"peer": c.url, "peers": sorted({b.url for b in bad}), "keyid": c.keyid,
                     "statement": c.statement, "attested": "unsafe",
                     "attested_method": c.method, "attested_at": c.time,
                     "priority": "high" if human else "normal",
                     "review_only": not quarantine})
    good = [c for c in claims if c.verdict == "safe" and c.method == "human"]
    if good and safe == "peers":
        c = good[0]
        return VerdictRecord(
            "clean", METHOD, f"peer {c.url}: safe by human review (statement {c.statement[:16]})",
            details={"peer": c.url, "keyid": c.keyid, "statement": c.statement,
                     "attested": "safe", "attested_method": "human", "attested_at": c.time})
    return None


def local_human_decision(conn: sqlite3.Connection, sha256: str) -> bool:
    """A person here decided about this content (confirmed/reported, or a console decision)."""
    return conn.execute(
        "SELECT 1 FROM incidents WHERE sha256=? AND reported_at IS NOT NULL UNION ALL "
        "SELECT 1 FROM attest_decisions WHERE sha256=? AND method='human' UNION ALL "
        "SELECT 1 FROM allowlist WHERE sha256=? LIMIT 1", (sha256, sha256, sha256)
    ).fetchone() is not None


def claims_for(conn: sqlite3.Connection, sha256: str, now: str | None = None
               ) -> list[PeerClaim]:
    """Each configured peer's newest live statement about ``sha256`` (safe/unsafe only)."""
    now = now or iso()
    rows = conn.execute(
        "SELECT s.*, p.url, p.keyid FROM peer_statements s JOIN peers p ON p.id = s.peer_id "
        "WHERE s.sha256=? AND s.revoked_by IS NULL AND (s.expires IS NULL OR s.expires > ?) "
        "ORDER BY s.time DESC, s.id DESC", (sha256, now)).fetchall()
    seen: set[int] = set()
    out = []
    for r in rows:
        if r["peer_id"] in seen:
            continue
        seen.add(r["peer_id"])
        if r["verdict"] in ("safe", "unsafe"):
            out.append(PeerClaim(r["url"], r["keyid"], r["statement_id"], r["verdict"],
                                 r["method"], r["time"]))
    return out


@dataclass(frozen=True)
class TrustPolicy:
    """FSQ_TRUST_SAFE / FSQ_TRUST_UNSAFE bound to the state database's peer statements."""

    safe: str = "off"        # off | peers
    unsafe: str = "review"   # review | quarantine | off

    @property
    def active(self) -> bool:
        return self.safe != "off" or self.unsafe != "off"

    def __call__(self, conn: sqlite3.Connection, sha256: str, md5: str | None = None
                 ) -> VerdictRecord | None:
        claims = claims_for(conn, sha256)
        if not claims:
            return None
        return decide(claims, safe=self.safe, unsafe=self.unsafe,
                      local_human=local_human_decision(conn, sha256))

    def settings(self) -> dict[str, Any]:
        return {"trust_safe": self.safe, "trust_unsafe": self.unsafe}
