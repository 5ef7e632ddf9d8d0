"""Moderation follow-up through Lemmy's API, with the evidence sealed before anything is deleted.

Why: Lemmy's own actions destroy evidence. Purging a post purges its URL image and thumbnail
from pict-rs; a site ban with data removal deletes every image the person uploaded; purging a
person deletes their media, and their ``local_image`` / ``login_token`` rows (uploader and IP
links) cascade away (docs: ../shared/reference/pictrs-lemmy.md). So every action here runs

    plan_action      read-only: the target rows (Lemmy DB), every local image the action would
                     destroy, where each is stored (pict-rs), the exact API call (version
                     detected from GET /site) -- all that ``--dry-run`` prints;
    execute_action   1. credentials checked (login, or the JWT tested where Lemmy allows it);
                     2. ``lemmy_actions`` row + audit ``lemmy.action.started``;
                     3. each file not yet in the vault sealed into an incident (origin
                        ``lemmy-action``, linked to the triggering incident): audit
                        ``incident.created`` / ``quarantined`` (fsq.lemmy.evidence);
                     4. the linkage snapshot (target, reports, uploaders, login IPs) stored with
                        its SHA-256: audit ``lemmy.evidence.snapshot``;
                     5. only then the call; audit ``lemmy.action.done`` (request minus secrets,
                        HTTP status, Lemmy object ids) or ``lemmy.action.failed``.

A failure in 1-4 sends nothing (exit 2 for credentials/configuration, 3 for a service), and a
rerun completes: sealed files are recognised and skipped. A failed call is recorded as failed
with the server's message (exit 3; exit 2 when Lemmy refuses the credentials).

Core only: no click, no printing. ``plan_action``, ``execute_action`` and
``fsq.lemmy.uploader.uploader_view`` are the entry points for the CLI and the review console.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from fsq.errors import ConfigError, FsqError, UsageError
from fsq.ledger import audit
from fsq.ledger.db import transaction
from fsq.lemmy import targets, urls
from fsq.lemmy.api import ACTIONS, Call, LemmyApi, LemmyAuthError, answer_ids, build_call
from fsq.lemmy.evidence import (PLANNED, EvidenceFile, blockers, check_ready, locate,
                                  preserve)
from fsq.timeutil import iso

DB_SETTING = "FSQ_LEMMY_DATABASE_URL"


@dataclass
class Plan:
    action: str
    target_kind: str
    target_id: int
    reason: str
    incident_id: int | None = None
    remove_data: bool = False
    community: dict[str, Any] | None = None
    expires: int | None = None
    destroys_media: bool = False
    target: dict[str, Any] = field(default_factory=dict)
    files: list[EvidenceFile] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lemmy_version: str | None = None
    call: Call | None = None

    @property
    def subject(self) -> str:
        return (f"incident:{self.incident_id}" if self.incident_id is not None
                else f"lemmy:{self.target_kind}:{self.target_id}")

    def steps(self) -> list[str]:
        """What execute_action will do, in order (for --dry-run and the console)."""
        out = []
        to_seal = [f for f in self.files if f.status == PLANNED]
        if self.destroys_media:
            out.append(f"find what it destroys: {len(self.files)} local image(s)")
            if to_seal:
                out.append(f"seal {len(to_seal)} file(s) not yet in the vault into incidents "
                           "(origin lemmy-action"
                           + (f", linked to incident {self.incident_id})"
                              if self.incident_id else ")"))
            for f in blockers(self.files):
                out.append(f"BLOCKED: alias {f.alias}: {f.detail}")
        out.append("snapshot the linkage (target, reports, uploaders, login IPs)")
        if self.call is not None:
            out.append(f"call {self.call.line()}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["call"] = self.call.to_dict() if self.call else None
        d["files"] = [f.to_dict() for f in self.files]
        d["steps"] = self.steps()
        d.pop("snapshot")
        return d


def parse_expires(text: str | None, now: datetime | None = None) -> int | None:
    """``--expires`` (ISO date or date-time; UTC unless it says otherwise) -> Unix seconds."""
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--expires {text!r} is not a date (YYYY-MM-DD or an ISO 8601 "
                         "date-time)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    ts = int(dt.timestamp())
    if ts <= int((now or datetime.now(timezone.utc)).timestamp()):
        raise UsageError(f"--expires {text} is in the past")
    return ts


def _open_db(settings: Any, needed: bool):
    from fsq.lemmy.lemmy_db import LemmyDB

    url = getattr(settings, "lemmy_database_url", None)
    if not url:
        if needed:
            raise ConfigError(f"{DB_SETTING} is not set: fsq reads the Lemmy database to find "
                              "what this action would destroy and never sends a destructive "
                              "call blind; set it (read-only role) and retry")
        return None
    return LemmyDB(url)


def _local_refs(values: list[str | None], host: str | None) -> list[str]:
    out: list[str] = []
    for v in values:
        if not v:
            continue
        refs = urls.find_image_refs(v, host) or urls.parse_image_url(v, host)
        for r in refs:
            if r.alias and r.alias not in out:
                out.append(r.alias)
    return out


def _add(files: list[EvidenceFile], aliases: list[str], why: str) -> None:
    known = {f.alias for f in files}
    for a in aliases:
        if not urls.is_alias(a):
            # local_image holds whatever was written to it; an alias fsq cannot use as a
            # pict-rs name stops the action rather than being silently left out
            files.append(EvidenceFile(alias=a, why=why, status="failed",
                                      detail="not a pict-rs alias fsq can look up"))
            known.add(a)
        elif a not in known:
            files.append(EvidenceFile(alias=a, why=why))
            known.add(a)


def _gather(plan: Plan, db: Any, settings: Any) -> None:
    """Target rows, the files the action destroys, and the linkage snapshot (read-only)."""
    host = urls.normalize_host(getattr(settings, "instance_url", None)) or \
        urls.normalize_host(db.local_domain())
    snap: dict[str, Any] = {"lemmy_schema": db.schema.version, "instance_host": host}
    people: list[int] = []
    if plan.target_kind == "post":
        row = targets.get_post(db, plan.target_id)
        plan.target = {k: row[k] for k in ("id", "name", "ap_id", "local", "creator_id",
                                           "community_id", "url", "thumbnail_url")}
        if plan.destroys_media:
            _add(plan.files, _local_refs([row["url"]], host), "post url")
            _add(plan.files, _local_refs([row["thumbnail_url"]], host), "post thumbnail")
            _add(plan.files, _local_refs([row["body"]], host), "image in post body")
        snap["reports"] = targets.reports_for(db, "post", plan.target_id)
        people.append(row["creator_id"])
    elif plan.target_kind == "comment":
        row = targets.get_comment(db, plan.target_id)
        plan.target = {k: row[k] for k in ("id", "ap_id", "local", "creator_id", "post_id")}
        if plan.destroys_media:
            _add(plan.files, _local_refs([row["content"]], host), "image in comment")
        snap["reports"] = targets.reports_for(db, "comment", plan.target_id)
        people.append(row["creator_id"])
    else:
        p = targets.person_by_id(db, plan.target_id)
        assert p is not None
        plan.target = asdict(p)
        people.append(p.id)
        if plan.destroys_media:
            ups = targets.person_upload_aliases(db, p.id)
            _add(plan.files, [a for a, _ in ups], f"upload of person {p.id}")
            for post in targets.person_post_images(db, p.id):
                _add(plan.files, _local_refs([post["url"], post["thumbnail_url"]], host),
                     f"image of post {post['id']} by person {p.id}")
    snap["target"] = dict(plan.target)
    snap["uploads"] = [asdict(u) for u in db.uploads([f.alias for f in plan.files])]
    snap["people"] = []
    for pid in dict.fromkeys(x for x in people if x is not None):
        p = targets.person_by_id(db, pid)
        uid, email, logins = targets.person_logins(db, pid)
        snap["people"].append({"person": asdict(p) if p else None, "local_user_id": uid,
                               "email": email, "logins": [asdict(lg) for lg in logins]})
    plan.snapshot = snap


def plan_action(conn: sqlite3.Connection, settings: Any, action: str, target: str | int, *,
                reason: str, incident: str | int | None = None, remove_data: bool = False,
                community: str | None = None, expires: str | None = None,
                api: LemmyApi | None = None) -> Plan:
    """Everything ``execute_action`` would do, found without changing anything.

    ``action``: remove-post | remove-comment | ban | purge-post | purge-comment | purge-person
    (``ban`` with ``community`` becomes a community ban). ``target``: a post/comment id, or a
    person (id, name, name@domain, actor URL). ``api``: a LemmyApi to reuse (version detection
    is one GET /site); made from the settings when None."""
    from fsq.custody.incidents import resolve

    if action == "ban" and community:
        action = "community-ban"
    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if not reason or not reason.strip():
        raise UsageError("--reason is required: Lemmy's modlog and fsq's audit log say why")
    kind = ACTIONS[action][0]
    destroys = action.startswith("purge-") or (action == "ban" and remove_data)
    inc = int(resolve(conn, incident)["id"]) if incident is not None else None
    plan = Plan(action=action, target_kind=kind, target_id=0, reason=reason.strip(),
                incident_id=inc, remove_data=bool(remove_data), destroys_media=destroys,
                expires=parse_expires(expires))
    db = _open_db(settings, needed=destroys or kind == "person" and not str(target).isdigit()
                  or community is not None and not str(community).isdigit())
    try:
        if kind == "person":
            plan.target_id = int(target) if db is None else int(targets.find_person(db, target).id)
        else:
            if not str(target).strip().isdigit():
                raise UsageError(f"{kind} id must be a number, not {str(target)!r}")
            plan.target_id = int(str(target).strip())
        if community is not None:
            plan.community = ({"id": int(community)} if db is None
                              else targets.find_community(db, community))
        if db is not None:
            _gather(plan, db, settings)
        else:
            plan.notes.append(f"{DB_SETTING} is not set: no linkage snapshot is taken")
            plan.target = {"id": plan.target_id}
    finally:
        if db is not None:
            db.close()
    if plan.files:
        plan.notes += locate(conn, settings, plan.files)
        unknown = [f for f in plan.files if f.status == "not-in-pictrs"]
        if unknown:
            plan.notes.append(f"{len(unknown)} alias(es) are unknown to pict-rs, so no stored "
                              "file of theirs can be sealed or deleted (if that is unexpected, "
                              "check FSQ_PICTRS_* point at this instance's pict-rs)")
    api = api or LemmyApi.from_settings(settings)
    api.detect()
    plan.lemmy_version = api.version
    plan.call = build_call(api.api or "v3", action, plan.target_id, reason=plan.reason,
                           remove_data=plan.remove_data,
                           community_id=plan.community["id"] if plan.community else None,
                           expires=plan.expires)
    return plan


def _update(conn: sqlite3.Connection, action_id: int, **cols: Any) -> None:
    sets = ", ".join(f"{c} = ?" for c in cols)
    with transaction(conn):
        conn.execute(f"UPDATE lemmy_actions SET {sets}, updated_at = ? WHERE id = ?",
                     (*cols.values(), iso(), action_id))


def _event(plan: Plan, action_id: int, **extra: Any) -> dict[str, Any]:
    return {"lemmy_action": action_id, "action": plan.action, "target": plan.target_kind,
            "target_id": plan.target_id, "lemmy_version": plan.lemmy_version,
            "request": plan.call.to_dict() if plan.call else None, **extra}


def execute_action(conn: sqlite3.Connection, settings: Any, plan: Plan, *,
                   api: LemmyApi | None = None,
                   progress: Callable[[EvidenceFile, int, int], None] | None = None
                   ) -> dict[str, Any]:
    """Run a plan: credentials, evidence, snapshot, then the call (see the module docstring).
    Returns the action record; raises FsqError (nothing sent, or the call failed)."""
    assert plan.call is not None, "plan_action sets the call"
    check_ready(settings, plan.files)   # blocked evidence or no vault key: stop right here
    api = api or LemmyApi.from_settings(settings)
    if api.api is None:
        api.detect()
    # A wrong login (both versions) or a wrong JWT (0.19, via my_user) stops here: nothing
    # sealed, nothing sent. 1.0's /site cannot test a JWT: there Lemmy refuses the call itself.
    api.authenticate()
    now = iso()
    with transaction(conn):
        action_id = int(conn.execute(
            "INSERT INTO lemmy_actions (created_at, updated_at, action, target_kind, target_id, "
            "incident_id, lemmy_version, reason, request, evidence, state) "
            "VALUES (?,?,?,?,?,?,?,?,?,?, 'sealing')",
            (now, now, plan.action, plan.target_kind, plan.target_id, plan.incident_id,
             plan.lemmy_version, plan.reason, json.dumps(plan.call.to_dict(), sort_keys=True),
             "[]")).lastrowid)
        audit.append(conn, "lemmy.action.started", plan.subject, _event(
            plan, action_id, files=len(plan.files), reason=plan.reason))

    def evidence_json() -> str:
        return json.dumps([f.to_dict() for f in plan.files], sort_keys=True)

    # The linkage snapshot is sealed with each file too: it then survives with the evidence
    # even if the state database does not (IPs and uploader are in the encrypted metadata).
    meta = {"lemmy_action_id": action_id, "action": plan.action,
            "target": {"kind": plan.target_kind, "id": plan.target_id}, "reason": plan.reason,
            "linkage": plan.snapshot}
    try:
        preserve(conn, settings, plan.files, meta=meta, linked_incident=plan.incident_id,
                 progress=progress)
    except FsqError as exc:
        _update(conn, action_id, state="failed", evidence=evidence_json(), error=exc.message)
        audit.append(conn, "lemmy.action.failed", plan.subject, _event(
            plan, action_id, stage="evidence", sent=False, error=exc.message))
        raise
    snap = dict(plan.snapshot)
    snap["evidence"] = [{k: f.to_dict()[k] for k in ("alias", "why", "identifier", "key",
                                                      "sha256", "status", "incident_id",
                                                      "entry_id")} for f in plan.files]
    snap_json = audit.canonical_json(snap)
    snap_sha = hashlib.sha256(snap_json.encode("utf-8")).hexdigest()
    with transaction(conn):
        conn.execute("UPDATE lemmy_actions SET evidence = ?, snapshot = ?, snapshot_sha256 = ?, "
                     "state = 'sent', updated_at = ? WHERE id = ?",
                     (evidence_json(), snap_json, snap_sha, iso(), action_id))
        audit.append(conn, "lemmy.evidence.snapshot", plan.subject, {
            "lemmy_action": action_id, "sha256": snap_sha,
            "sealed": [f.entry_id for f in plan.files if f.status == "sealed"],
            "in_vault": [f.entry_id for f in plan.files if f.status == "in-vault"],
            "people": len(snap.get("people", [])), "reports": len(snap.get("reports", []))})
    try:
        ans = api.send(plan.call)
    except FsqError as exc:
        status = getattr(exc, "status", None)
        msg = api.scrub(exc.message)
        _update(conn, action_id, state="failed", http_status=status, error=msg)
        audit.append(conn, "lemmy.action.failed", plan.subject, _event(
            plan, action_id, stage="call", sent=status is not None, status=status, error=msg,
            auth=isinstance(exc, LemmyAuthError)))
        raise
    ids = answer_ids(ans.data)
    _update(conn, action_id, state="done", http_status=ans.status,
            response=json.dumps(ids, sort_keys=True))
    audit.append(conn, "lemmy.action.done", plan.subject, _event(
        plan, action_id, status=ans.status, lemmy_ids=ids,
        evidence=[f.entry_id for f in plan.files if f.entry_id]))
    return action_record(conn, action_id)


def action_record(conn: sqlite3.Connection, action_id: int) -> dict[str, Any]:
    r = conn.execute("SELECT * FROM lemmy_actions WHERE id = ?", (action_id,)).fetchone()
    d = {k: r[k] for k in r.keys() if k != "snapshot"}
    for k in ("request", "evidence", "response"):
        if d.get(k):
            d[k] = json.loads(d[k])
    return d


def actions_for(conn: sqlite3.Connection, *, incident_id: int | None = None,
                person_id: int | None = None) -> list[dict[str, Any]]:
    """Recorded actions triggered by an incident, or aimed at a person."""
    if incident_id is not None:
        rows = conn.execute("SELECT id FROM lemmy_actions WHERE incident_id = ? ORDER BY id",
                            (incident_id,)).fetchall()
    else:
        rows = conn.execute("SELECT id FROM lemmy_actions WHERE target_kind = 'person' AND "
                            "target_id = ? ORDER BY id", (person_id,)).fetchall()
    return [action_record(conn, r[0]) for r in rows]
