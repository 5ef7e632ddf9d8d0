"""Purge: destroy the evidence of an incident for good (crypto-shredding), crash-safely.

Who decides is ``fsq.custody.retention.eligibility`` (cleared, past retention, no active
hold), or a law-enforcement destruction request (18 U.S.C. 2258B) for one named incident. This
module does the destroying, and leaves the minimal trace invariant 5 asks for.

Steps for one incident, each committed before the next side effect:

1. Preflight (no change yet): no unfinished quarantine move; the clearance and the holds in the
   database agree with the audit log, and every clearance, hold lift and destruction request
   carries a valid custodian signature whose record matches the database and the retention
   start recomputed from the audit chain (``fsq.custody.decisions.verify_for_purge``: an
   edited database must not be able to authorise destruction); each vault entry's sealed
   metadata names this incident, entry, source, key and sha256 (``binding_problem``: an entry
   moved to another incident in the database is not destroyed with it); no vault object is
   under object-lock retention (``retention_blocks_delete`` when the store offers it). A
   failed preflight leaves the incident as it was, with an audit event saying why
   (``purge.blocked`` / ``purge.refused``).
2. One transaction: the rule is evaluated again (a hold may have been added meanwhile), the
   incident becomes ``purging`` (an intermediate state) and ``purge.started`` is audited with
   the entries to destroy, the mode and the reference. This is the journal: nothing is deleted
   before it is durable.
3. Per vault entry: delete ``<id>.key`` first - the wrapped data key; without it the sealed blob
   is undecipherable noise, so the evidence is destroyed even if the next step fails - then
   ``<id>.blob``, then check with ``exists`` that both are gone; the entry becomes ``purged``.
4. One transaction: the incident becomes ``purged`` (``purged_at``, ``purge_reason``), its
   storage-key rows ``purged``, and the ``purged`` audit event carries the minimal trace:
   incident id, sha256, md5, size, quarantine/report/clearance times, report reference, who
   cleared and why, the destruction-request reference, the entries shredded.
5. Optional pict-rs cleanup (``POST /internal/purge?alias=``) for aliases known in
   ``identifier_aliases``; a failure is reported and audited, the purge record stays.

Resume: an incident found in ``purging`` (SIGKILL, power cut, storage outage mid-way) is
finished by the next purge run before anything else, from its ``purge.started`` event; deletes
are idempotent. If a failure happens before anything was deleted (object lock, storage down),
the incident returns to its previous state instead and can be retried normally.

What stays in the state database afterwards, on purpose: hashes (sha256, md5), sizes, storage
keys, verdict details (scores, never bytes), vault entry ids and ciphertext hashes, pict-rs
aliases. That is the minimal trace needed to recognise the same content if it is uploaded again
and to answer for what was destroyed; none of it is evidence. The sealed metadata (inside the
blob) is destroyed with the blob. Audit rows are never deleted.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime
from typing import Any, Callable

from fsq.custody.decisions import audit_crosscheck  # noqa: F401 (its former home)
from fsq.custody.holds import LIVE_ENTRY_STATES, holds_for
from fsq.custody.retention import (EVIDENCE_STATES, Eligibility, HoldFacts, IncidentFacts,
                                   active_holds, eligibility, fmt_time)
from fsq.errors import ExternalError, FsqError, NotFound, UsageError
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.quarantine.move import UNFINISHED, blob_name, key_name
from fsq.quarantine.store import VaultLocked, VaultStore
from fsq.testonly import crash_point
from fsq.timeutil import iso, utcnow

log = logging.getLogger("fsq.purge")

MODE_CLEARANCE = "clearance"
MODE_DESTRUCTION = "destruction-request"

# Result statuses (one per incident):
#   purged, would-purge, kept            the normal outcomes
#   blocked      could not start or finish because the store refuses deletion yet (object lock)
#   failed       a storage or pict-rs call failed
#   unverified   deleted, but the store still shows an object afterwards (integrity, exit 4)
#   refused      the database disagrees with the audit log (integrity, exit 4)
#   already-purged


class VerifyFailed(Exception):
    """Objects still present after deletion."""


def base_state(row: sqlite3.Row) -> str:
    """The stored state an incident had before purging started (for a roll-back)."""
    if row["cleared_at"] is not None:
        return "cleared"
    if row["reported_at"] is not None:
        return "reported"
    return "quarantined"


def facts(conn: sqlite3.Connection, row: sqlite3.Row) -> tuple[IncidentFacts, list[HoldFacts]]:
    return IncidentFacts.from_row(row), holds_for(conn, int(row["id"]))


def evaluate(conn: sqlite3.Connection, row: sqlite3.Row, retention_days: int, now: datetime
             ) -> Eligibility:
    f, h = facts(conn, row)
    return eligibility(f, h, retention_days, now)


def _live_entries(conn: sqlite3.Connection, incident_id: int) -> list[sqlite3.Row]:
    return conn.execute(
        f"SELECT * FROM vault_entries WHERE incident_id=? AND state IN "
        f"({','.join('?' * len(LIVE_ENTRY_STATES))}) ORDER BY created_at",
        (incident_id, *LIVE_ENTRY_STATES)).fetchall()


class Purger:
    """Runs purges against the vault(s) the entries were sealed into.

    ``vault_for(url)`` opens a vault by URL (the CLI caches them); ``pictrs`` is an object with
    ``purge(alias) -> list[str]`` (``fsq.lemmy.pictrs_api.PictrsApi``) or None; ``clock``
    returns the current UTC time (tests inject one)."""

    def __init__(self, conn: sqlite3.Connection, vault_for: Callable[[str], VaultStore], *,
                 pictrs: Any = None, clock: Callable[[], datetime] = utcnow,
                 custodian: Any = None, private_key: Any = None) -> None:
        self.conn = conn
        self.vault_for = vault_for
        self.pictrs = pictrs
        self.clock = clock
        # custodian: a Verifier (dry runs) or an unlocked Signer (purges; destruction requests
        # are signed). private_key: the vault private key, to check each entry's sealed
        # metadata before destroying it. Without them a purge refuses: fail closed.
        self.custodian = custodian
        self.private_key = private_key

    # -- planning ---------------------------------------------------------------------------

    def plan(self, retention_days: int, *, check: bool = False) -> list[dict[str, Any]]:
        """Every incident that still has (or may get) evidence, with the rule's answer. With
        ``check`` (dry runs) and a custodian public key, an eligible incident whose signed
        decisions do not verify is shown as ``refused`` (the sealed-metadata check needs the
        private key and runs only in a real purge)."""
        from fsq.custody.custodian import Verifier
        from fsq.custody.decisions import verify_for_purge
        now = self.clock()
        out = []
        for row in self.conn.execute("SELECT * FROM incidents WHERE state NOT IN "
                                     "('purged','released') ORDER BY id").fetchall():
            el = evaluate(self.conn, row, retention_days, now)
            status = ("would-purge" if el.eligible
                      else "would-finish" if row["state"] == "purging" else "kept")
            reasons = el.reasons
            if check and el.eligible and isinstance(self.custodian, Verifier):
                problem = (audit_crosscheck(self.conn, row, MODE_CLEARANCE)
                           or verify_for_purge(self.conn, row, clearance=True,
                                               verifier=self.custodian))
                if problem:
                    status, reasons = "refused", [problem]
            out.append(self._result(row, status,
                                    reasons, el, entries=[e["id"] for e in
                                                          _live_entries(self.conn, row["id"])]))
        return out

    def _result(self, row: sqlite3.Row, status: str, reasons: list[str],
                el: Eligibility | None = None, **extra: Any) -> dict[str, Any]:
        r: dict[str, Any] = {
            "incident": int(row["id"]), "sha256": row["sha256"], "state": row["state"],
            "status": status, "reasons": reasons,
            "retention_end": iso(el.retention_end) if el and el.retention_end else None,
            "holds": [h.id for h in el.blocking_holds] if el else [],
        }
        r.update(extra)
        return r

    # -- entry points -----------------------------------------------------------------------

    def resume(self) -> list[dict[str, Any]]:
        """Finish every incident left in ``purging``."""
        rows = self.conn.execute("SELECT * FROM incidents WHERE state='purging' ORDER BY id"
                                 ).fetchall()
        results = []
        from fsq.custody.custodian import Verifier
        from fsq.custody.decisions import verify_purge_start
        for row in rows:
            started = self._started_event(int(row["id"]))
            # Resuming shreds what the journal names without the other checks: a journal a
            # database writer forged (state 'purging' + a chained purge.started row) must not
            # destroy anything.
            verifier = self.custodian if isinstance(self.custodian, Verifier) else None
            problem = verify_purge_start(self.conn, row, started.get("entries"), verifier)
            if problem:
                results.append(self._block(row, "refused", "purge.refused", [problem],
                                           str(started.get("mode", "unknown"))))
                continue
            res = self._shred_and_finish(row, started, resumed=True)
            results.append(res)
        return results

    def after_clearance(self, retention_days: int, *, dry_run: bool = False
                        ) -> list[dict[str, Any]]:
        """Purge exactly the incidents the rule allows; list the rest with their reasons."""
        if dry_run:
            return self.plan(retention_days, check=True)
        audit.require_intact(self.conn)
        results = self.resume()
        done = {r["incident"] for r in results}
        for item in self.plan(retention_days):
            if item["incident"] in done:
                continue
            if item["status"] != "would-purge":
                results.append(item)
                continue
            row = self._row(item["incident"])
            results.append(self._purge(row, MODE_CLEARANCE, None, retention_days))
        return results

    def destroy(self, incident_id: int, reference: str, *, dry_run: bool = False
                ) -> list[dict[str, Any]]:
        """Law-enforcement destruction request: destroy one incident now, whatever retention
        and clearance say. Active holds still block: lift them explicitly first."""
        reference = (reference or "").strip()
        if not reference:
            raise UsageError("--destruction-request needs the request's reference")
        row = self._row(incident_id)
        if row["state"] == "purged":
            return [self._result(row, "already-purged",
                                 [f"already purged on {row['purged_at']} "
                                  f"({row['purge_reason']})"])]
        if row["state"] == "released":
            raise UsageError(f"incident {incident_id} was released as a false positive on "
                             f"{row['released_at']}; the vault holds nothing of it")
        if row["state"] not in EVIDENCE_STATES + ("purging",) or row["quarantined_at"] is None:
            raise UsageError(f"incident {incident_id} is not quarantined: its file is still in "
                             "the source, not in the vault; quarantine it first (`fsq apply`)")
        now = self.clock()
        _, holds = facts(self.conn, row)
        blocking = active_holds(holds, now)
        if blocking and row["state"] != "purging":
            labels = ", ".join(h.label() for h in blocking)
            raise UsageError(f"incident {incident_id} is under {labels}; a destruction request "
                             "does not override a hold - lift it with `fsq hold lift HOLD "
                             "--reason ...` (citing the request) and run this again")
        if dry_run:
            return [self._result(row, "would-purge",
                                 [f"law-enforcement destruction request {reference}"],
                                 entries=[e["id"] for e in _live_entries(self.conn,
                                                                         incident_id)])]
        audit.require_intact(self.conn)
        results = self.resume()
        if any(r["incident"] == incident_id for r in results):
            return results
        results.append(self._purge(self._row(incident_id), MODE_DESTRUCTION, reference, None))
        return results

    # -- one incident -----------------------------------------------------------------------

    def _row(self, incident_id: int) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM incidents WHERE id=?", (incident_id,)).fetchone()
        if row is None:
            raise NotFound(f"no incident {incident_id}; list them with `fsq incidents`")
        return row

    def _started_event(self, incident_id: int) -> dict[str, Any]:
        ev = None
        for e in audit.events(self.conn, subject=f"incident:{incident_id}",
                              action_prefix="purge.started"):
            ev = e
        if ev is None:  # cannot happen through fsq: state and event commit together
            return {"mode": "unknown", "entries": None}
        return json.loads(ev["details"])

    def _block(self, row: sqlite3.Row, status: str, action: str, reasons: list[str],
               mode: str, **details: Any) -> dict[str, Any]:
        audit.append(self.conn, action, f"incident:{row['id']}",
                     {"mode": mode, "reasons": reasons, "sha256": row["sha256"], **details})
        return self._result(row, status, reasons)

    def _purge(self, row: sqlite3.Row, mode: str, reference: str | None,
               retention_days: int | None) -> dict[str, Any]:
        iid = int(row["id"])
        entries = _live_entries(self.conn, iid)
        unfinished = self.conn.execute(
            f"SELECT COUNT(*) FROM vault_entries WHERE incident_id=? AND state IN "
            f"('sealing',{','.join('?' * len(UNFINISHED))})", (iid, *UNFINISHED)).fetchone()[0]
        if unfinished:
            return self._block(row, "blocked", "purge.blocked",
                               [f"{unfinished} unfinished quarantine move(s); run `fsq recover`"],
                               mode)
        problem = audit_crosscheck(self.conn, row, mode) or self._custody_problem(row, mode)
        if problem:
            return self._block(row, "refused", "purge.refused", [problem], mode)
        # Object lock: ask before starting, so a locked incident is left exactly as it was.
        now = self.clock()
        try:
            locked = self._locked_until(entries, now)
        except FsqError as exc:
            return self._block(row, "failed", "purge.failed", [exc.message], mode)
        if locked:
            until = max(locked)
            return self._block(row, "blocked", "purge.blocked",
                               [f"object lock until {fmt_time(until)}"], mode,
                               locked_until=iso(until))
        signed: dict[str, Any] = {}
        if mode == MODE_CLEARANCE:
            purge_reason = (f"cleared by {row['cleared_by']}: {row['clear_reason']}"
                            + (f" ({row['clear_reference']})" if row["clear_reference"] else ""))
        else:
            purge_reason = f"law-enforcement destruction request {reference}"
            from fsq.custody.decisions import sign_destruction
            s = sign_destruction(self.conn, row, reference or "", self.custodian,
                                 now=self.clock())
            signed = {"signature": s["signature"], "fingerprint": s["fingerprint"]}
        with transaction(self.conn):
            cur = self.conn.execute("SELECT * FROM incidents WHERE id=?", (iid,)).fetchone()
            if mode == MODE_CLEARANCE:
                assert retention_days is not None
                el = evaluate(self.conn, cur, retention_days, self.clock())
                if not el.eligible:  # changed since the plan (e.g. a hold was just added)
                    return self._result(cur, "kept", el.reasons, el)
            elif cur["state"] not in EVIDENCE_STATES:
                return self._result(cur, "kept", [f"state changed to {cur['state']}"])
            entry_ids = [e["id"] for e in _live_entries(self.conn, iid)]
            self.conn.execute("UPDATE incidents SET state='purging', purge_reason=? WHERE id=?",
                              (purge_reason, iid))
            from fsq.custody.decisions import sign_purge_start
            journal = sign_purge_start(self.conn, cur, entry_ids, mode, self.custodian)
            signed = {**signed, "journal_signature": journal["signature"]}
            started = {"mode": mode, "destruction_request": reference, "reason": purge_reason,
                       "entries": entry_ids, "previous_state": cur["state"],
                       "sha256": cur["sha256"], "retention_days": retention_days, **signed}
            audit.append(self.conn, "purge.started", f"incident:{iid}", started)
        crash_point("purge-after-started")
        return self._shred_and_finish(self._row(iid), started, resumed=False)

    def _custody_problem(self, row: sqlite3.Row, mode: str) -> str | None:
        """Signatures, retention start and vault bindings (see the module docstring)."""
        from fsq.custody.custodian import Signer
        from fsq.custody.decisions import verify_for_purge
        from fsq.quarantine.release import binding_problem
        if not isinstance(self.custodian, Signer):  # it verifies, and signs the journal
            return "no unlocked custodian key to verify and sign with; purge needs the passphrase"
        problem = verify_for_purge(self.conn, row, clearance=mode == MODE_CLEARANCE,
                                   verifier=self.custodian)
        if problem:
            return problem
        if self.private_key is None:
            return "no vault private key to check the sealed metadata with"
        for e in _live_entries(self.conn, int(row["id"])):
            problem = binding_problem(self.vault_for(e["vault"]), e, self.private_key)
            if problem:
                return problem
        return None

    def _locked_until(self, entries: list[sqlite3.Row], now: datetime) -> list[datetime]:
        out = []
        for e in entries:
            store = self.vault_for(e["vault"])
            check = getattr(store, "retention_blocks_delete", None)
            if check is None:
                continue
            for name in (key_name(e["id"]), blob_name(e["id"])):
                until = check(name, now)
                if until is not None:
                    out.append(until)
        return out

    def _shred_and_finish(self, row: sqlite3.Row, started: dict[str, Any], *, resumed: bool
                          ) -> dict[str, Any]:
        iid = int(row["id"])
        wanted = started.get("entries")
        rows = {e["id"]: e for e in self.conn.execute(
            "SELECT * FROM vault_entries WHERE incident_id=?", (iid,))}
        if wanted is None:
            wanted = [e["id"] for e in _live_entries(self.conn, iid)]
        shredded: list[str] = []
        try:
            for eid in wanted:
                e = rows.get(eid)
                if e is None or e["state"] == "purged":
                    shredded.append(eid)
                    continue
                self._shred(e)
                shredded.append(eid)
        except VerifyFailed as exc:
            return self._block(row, "unverified", "purge.unverified", [str(exc)],
                               started.get("mode", "unknown"), entries_shredded=shredded)
        except FsqError as exc:
            status = "blocked" if isinstance(exc, VaultLocked) else "failed"
            why = exc.message
            if not resumed and self._untouched(wanted, rows):
                back = base_state(row)
                with transaction(self.conn):
                    self.conn.execute("UPDATE incidents SET state=?, purge_reason=NULL "
                                      "WHERE id=? AND state='purging'", (back, iid))
                    audit.append(self.conn, f"purge.{status}", f"incident:{iid}",
                                 {"mode": started.get("mode"), "reasons": [why],
                                  "rolled_back_to": back, "sha256": row["sha256"]})
                return self._result(self._row(iid), status,
                                    [why, f"nothing was deleted; back to {back}"])
            return self._block(row, status, f"purge.{status}",
                               [why, "partly shredded; the next purge run finishes it"],
                               started.get("mode", "unknown"), entries_shredded=shredded)
        crash_point("purge-before-final")
        trace = self._finish(row, started, shredded)
        if trace is None:  # another process finished it meanwhile
            return self._result(self._row(iid), "purged", ["finished by another purge run"],
                                entries=shredded, resumed=resumed)
        res = self._result(self._row(iid), "purged",
                           [started.get("reason") or ""], entries=shredded, resumed=resumed)
        if self.pictrs is not None:
            res["pictrs"] = self._pictrs_cleanup(row, shredded)
        return res

    def _untouched(self, wanted: list[str], rows: dict[str, sqlite3.Row]) -> bool:
        """True if every entry to shred is provably still whole (nothing deleted yet)."""
        try:
            return self._all_present(wanted, rows)
        except FsqError:
            return False  # cannot tell: stay 'purging' and let the next run finish it

    def _all_present(self, wanted: list[str], rows: dict[str, sqlite3.Row]) -> bool:
        for eid in wanted:
            e = rows.get(eid)
            if e is None or e["state"] not in LIVE_ENTRY_STATES:
                return False
            store = self.vault_for(e["vault"])
            if not (store.exists(key_name(eid)) and store.exists(blob_name(eid))):
                return False
        return True

    def _shred(self, e: sqlite3.Row) -> None:
        store = self.vault_for(e["vault"])
        kname, bname = key_name(e["id"]), blob_name(e["id"])
        # The wrapped data key first: once it is gone the blob cannot be decrypted by anyone.
        store.delete(kname)
        crash_point("purge-after-key")
        store.delete(bname)
        crash_point("purge-after-blob")
        left = [n for n in (kname, bname) if store.exists(n)]
        if left:
            raise VerifyFailed(f"{', '.join(left)} still present in {store.url} after deletion")
        with transaction(self.conn):
            self.conn.execute("UPDATE vault_entries SET state='purged', updated_at=? WHERE id=?",
                              (iso(), e["id"]))
        crash_point("purge-after-entry")

    def _finish(self, row: sqlite3.Row, started: dict[str, Any], shredded: list[str]
                ) -> dict[str, Any] | None:
        iid = int(row["id"])
        now = iso(self.clock())
        with transaction(self.conn):
            cur = self.conn.execute("SELECT * FROM incidents WHERE id=?", (iid,)).fetchone()
            if cur["state"] != "purging":
                return None
            reason = started.get("reason") or cur["purge_reason"] or "purged"
            self.conn.execute("UPDATE incidents SET state='purged', purged_at=?, purge_reason=? "
                              "WHERE id=?", (now, reason, iid))
            keys = [r["object_id"] for r in self.conn.execute(
                "SELECT object_id FROM vault_entries WHERE incident_id=? AND state='purged' "
                "AND object_id IS NOT NULL", (iid,))]
            for oid in keys:
                self.conn.execute("UPDATE objects SET status='purged', reason=? WHERE id=? AND "
                                  "status='quarantined'", (f"purged: {reason}"[:500], oid))
            trace = {
                "sha256": cur["sha256"], "md5": cur["md5"], "size": cur["size"],
                "quarantined_at": cur["quarantined_at"], "reported_at": cur["reported_at"],
                "report_reference": cur["report_reference"], "cleared_at": cur["cleared_at"],
                "cleared_by": cur["cleared_by"], "clear_reason": cur["clear_reason"],
                "clear_reference": cur["clear_reference"], "mode": started.get("mode"),
                "destruction_request": started.get("destruction_request"),
                "reason": reason, "purged_at": now, "entries_shredded": shredded,
                "retention_days": started.get("retention_days"),
            }
            audit.append(self.conn, "purged", f"incident:{iid}", trace)
        return trace

    # -- pict-rs ----------------------------------------------------------------------------

    def _pictrs_cleanup(self, row: sqlite3.Row, shredded: list[str]) -> dict[str, Any]:
        iid = int(row["id"])
        idents = [r["key"] for r in self.conn.execute(
            "SELECT key FROM vault_entries WHERE incident_id=? ORDER BY created_at", (iid,))]
        aliases: list[str] = []
        for ident in dict.fromkeys(idents):
            aliases += [r[0] for r in self.conn.execute(
                "SELECT alias FROM identifier_aliases WHERE identifier=? ORDER BY alias",
                (ident,))]
        out: dict[str, Any] = {"aliases": aliases, "purged": [], "error": None}
        if not aliases:
            out["note"] = "no pict-rs aliases known for this incident"
            return out
        gone: set[str] = set()
        try:
            for alias in aliases:
                if alias in gone:
                    continue
                got = self.pictrs.purge(alias)
                gone.update(got or [alias])
                out["purged"].append(alias)
        except FsqError as exc:
            out["error"] = exc.message
        except Exception as exc:  # a client bug must not hide that the purge itself happened
            out["error"] = f"{exc.__class__.__name__}: {exc}"
        audit.append(self.conn, "purge.pictrs_failed" if out["error"] else "purge.pictrs",
                     f"incident:{iid}",
                     {"aliases": out["purged"], "error": out["error"]})
        return out


def pictrs_client(settings: Any) -> Any:
    """The pict-rs client purge should use, or None when the cleanup is off.

    Enabled but unconfigured is a configuration error before anything is destroyed."""
    if not settings.pictrs_purge_on_purge:
        return None
    if not settings.pictrs_url or not settings.pictrs_api_key:
        from fsq.errors import ConfigError
        raise ConfigError("FSQ_PICTRS_PURGE_ON_PURGE is on but FSQ_PICTRS_URL or "
                          "FSQ_PICTRS_API_KEY is not set; set both or turn it off")
    from fsq.lemmy.pictrs_api import PictrsApi
    try:
        return PictrsApi(settings.pictrs_url, settings.pictrs_api_key)
    except ExternalError as exc:
        from fsq.errors import ConfigError
        raise ConfigError(exc.message) from None
