"""The incident report's view model: plain dicts and lists built from the state DB + linkage.

Everything the template shows is computed here, so the template stays logic-light and the same
model serves ``fsq report --json``. Values are raw (untrusted Lemmy text included); the renderer
neutralises every string (fsq.reports.render.sanitize_tree) before the template sees it.

Tolerance: verdict ``details`` is JSON written by whichever classifier version ran; every key is
optional here. Missing facts are shown as missing, never guessed.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from fsq import __version__
from fsq.config import mask_url
from fsq.custody import retention
from fsq.custody.incidents import resolve
from fsq.ledger import audit
from fsq.lemmy import urls
from fsq.lemmy.followup import follow_up
from fsq.lemmy.linkage import LABELS, Linkage, link_incident
from fsq.timeutil import iso, parse_iso, utcnow

INCIDENT_TYPE = "Child Pornography (possession, manufacture, and distribution)"
VIEW_ACTIONS = ("evidence.decrypted", "evidence.viewed")
TOP_SCORES = 8


def retention_end(incident: Any, retention_days: int) -> str | None:
    """End of the retention period for an ``incidents`` row (ISO text, None if not started).

    The rule itself lives in fsq.custody.retention (clock from reported_at, else
    quarantined_at)."""
    end = retention.retention_end(retention.IncidentFacts.from_row(incident), retention_days)
    return iso(end) if end is not None else None


def _loads(text: str | None) -> tuple[Any, str | None]:
    if not text:
        return {}, None
    try:
        return json.loads(text), None
    except ValueError as exc:
        return {}, f"unparseable JSON ({exc.msg})"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def classifier_view(verdict: sqlite3.Row | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    details, problem = _loads(verdict["details"])
    if not isinstance(details, dict):
        details, problem = {}, "details are not a JSON object"
    fired = []
    thresholds: dict[str, float] = {}
    for f in details.get("fired") or []:
        if not isinstance(f, dict):
            continue
        adj, thr = _num(f.get("adjusted")), _num(f.get("threshold"))
        name = str(f.get("text", ""))
        if thr is not None:
            thresholds[name] = thr
        fired.append({"text": name, "group": f.get("group"), "raw": _num(f.get("raw")),
                      "adjusted": adj, "threshold": thr,
                      "margin": adj - thr if adj is not None and thr is not None else None,
                      "critical": bool(f.get("critical")), "level": f.get("level")})
    extra_thr = details.get("thresholds")
    if isinstance(extra_thr, dict):
        for k, v in extra_thr.items():
            if _num(v) is not None:
                thresholds.setdefault(str(k), float(v))  # type: ignore[arg-type]
    # top scores: prefer adjusted, else raw scores; dict {concept: score} or list of dicts
    scores: list[dict[str, Any]] = []
    raw_scores = details.get("scores")
    src = details.get("adjusted") if isinstance(details.get("adjusted"), (dict, list)) \
        else raw_scores
    if isinstance(src, dict):
        for k, v in src.items():
            if _num(v) is not None:
                scores.append({"text": str(k), "score": float(v)})
    elif isinstance(src, list):
        for item in src:
            if isinstance(item, dict):
                s = _num(item.get("adjusted", item.get("score", item.get("raw"))))
                if s is not None:
                    scores.append({"text": str(item.get("text", item.get("concept", ""))),
                                   "score": s})
    scores.sort(key=lambda d: d["score"], reverse=True)
    for s in scores:
        s["threshold"] = thresholds.get(s["text"])
        s["raw"] = _num(raw_scores.get(s["text"])) if isinstance(raw_scores, dict) else None
        s["over"] = s["threshold"] is not None and s["score"] >= s["threshold"]
    hash_list = details.get("hash_list")
    matched = details.get("matched")
    adjustments = details.get("adjustments")
    if isinstance(adjustments, dict):
        adjustments = [{"name": str(k), "value": v} for k, v in adjustments.items()]
    elif isinstance(adjustments, list):
        adjustments = [a if isinstance(a, dict) else {"name": str(a), "value": None}
                       for a in adjustments]
    else:
        adjustments = []
    return {
        "id": verdict["id"], "created_at": verdict["created_at"], "outcome": verdict["outcome"],
        "reason": verdict["reason"], "method": verdict["method"],
        "model_id": verdict["model_id"], "concepts_digest": verdict["concepts_digest"],
        "severity": verdict["severity"], "rule_version": verdict["rule_version"],
        "frames": verdict["frames"],
        "fired": fired, "top_scores": scores[:TOP_SCORES], "adjustments": adjustments,
        "underage_count": details.get("underage_count"),
        "lewd_fired": details.get("lewd_fired"),
        "hash_match": ({"list": hash_list, "matched": matched}
                       if hash_list or matched or verdict["method"] == "hash-list" else None),
        "problem": problem,
    }


def _storage(conn: sqlite3.Connection, row: sqlite3.Row) -> list[dict[str, Any]]:
    """Every (source, key) that held the content, with its vault entries."""
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def slot(source: str, key: str) -> dict[str, Any]:
        k = (source, key)
        if k not in out:
            out[k] = {"source": mask_url(source), "key": key, "status": None,
                      "first_seen": None, "last_seen": None, "size": None, "entries": []}
        return out[k]

    for o in conn.execute("SELECT * FROM objects WHERE sha256=? ORDER BY first_seen, id",
                          (row["sha256"],)):
        s = slot(o["source"], o["key"])
        s.update(status=o["status"], first_seen=o["first_seen"], last_seen=o["last_seen"],
                 size=o["size"])
    for e in conn.execute("SELECT * FROM vault_entries WHERE incident_id=? "
                          "ORDER BY created_at, id", (row["id"],)):
        slot(e["source"], e["key"])["entries"].append({
            "id": e["id"], "state": e["state"], "vault": mask_url(e["vault"]),
            "created_at": e["created_at"], "updated_at": e["updated_at"],
            "sha256_ok": e["sha256"] == row["sha256"], "blob_sha256": e["blob_sha256"],
            "retain_until": e["retain_until"], "error": e["error"]})
    return list(out.values())


def _holds(conn: sqlite3.Connection, iid: int, now: datetime
           ) -> tuple[list[dict[str, Any]], list[retention.HoldFacts]]:
    res, facts = [], []
    for h in conn.execute("SELECT * FROM holds WHERE incident_id=? ORDER BY created_at, id",
                          (iid,)):
        f = retention.HoldFacts.from_row(h)
        facts.append(f)
        res.append({k: h[k] for k in h.keys()} | {"active": retention.hold_active(f, now)})
    return res, facts


def _timeline(conn: sqlite3.Connection, iid: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events = []
    for ev in audit.events(conn, subject=f"incident:{iid}"):
        det, problem = _loads(ev["details"])
        events.append({"seq": ev["seq"], "ts": ev["ts"], "actor": ev["actor"],
                       "command": ev["command"], "action": ev["action"],
                       "tool_version": ev["tool_version"],
                       "details": det if isinstance(det, dict) else {"value": det}})
    res = audit.verify(conn)
    chain = {"ok": res.ok, "rows": res.rows, "head": res.head, "bad_seq": res.bad_seq,
             "problem": res.problem}
    return events, chain


def _linkage_view(link: Linkage | None, settings: Any) -> dict[str, Any]:
    if link is None:
        sources = [{"name": n, "label": LABELS[n], "status": "skipped",
                    "detail": "linkage was not run for this report"}
                   for n in ("pictrs-repo", "pictrs-api", "lemmy-db")]
        return {"done": False, "sources": sources, "missing": sources,
                "problems": ["linkage was not run for this report"], "hits": [],
                "hits_by_kind": {}, "uploads": [], "repo": [], "aliases": {},
                "all_aliases": [], "proxied_urls": [], "notes": [], "orphan": None,
                "orphan_reason": None, "lemmy_schema": None, "instance_host": None,
                "sources_used": [], "sources_unavailable": [], "keys": [], "alias_via": {},
                "sha256": None}
    d = link.to_dict()
    d["done"] = True
    # people: uploader(s) first, then the authors of referencing rows, deduplicated
    d["hits_by_kind"] = {}
    for h in d["hits"]:
        d["hits_by_kind"].setdefault(h["kind"], []).append(h)
    d["missing"] = [s for s in d["sources"] if s["status"] == "unavailable"]
    return d


def _file_view(e: dict[str, Any]) -> bool:
    """Whether an audit event means a person could have seen the file itself.

    Review-console previews (``evidence.viewed``) count only when un-blurred and actually
    rendered; the level-0 blurred preview does not. Any other decryption of the evidence
    (``evidence.decrypted``, e.g. a release) counts, as before: fsq cannot tell whether a
    person looked at the plaintext."""
    if e["action"] == "evidence.viewed":
        d = e["details"]
        return d.get("blurred") is False and d.get("rendered") is not False
    return e["action"] in VIEW_ACTIONS


def _cybertip(row: sqlite3.Row, link: Linkage | None, storage: list[dict[str, Any]],
              events: list[dict[str, Any]], settings: Any) -> dict[str, Any]:
    viewed = [e for e in events if _file_view(e)]
    previews = [{"seq": e["seq"], "ts": e["ts"], "actor": e["actor"],
                 "reviewer": e["details"].get("reviewer"), "level": e["details"].get("level"),
                 "blurred": e["details"].get("blurred") is not False,
                 "rendered": e["details"].get("rendered") is not False}
                for e in events if e["action"] == "evidence.viewed"]
    locations: list[str] = []
    upload_time: str | None = None
    upload_time_source = None
    person = None
    ip_events: list[dict[str, Any]] = []
    public: str = "unknown"
    aliases: list[str] = []
    if link is not None:
        # the uploader's alias first: that is the file a person put there
        uploaded = [u.alias for u in link.uploads if u.person]
        aliases = uploaded + [a for a in link.all_aliases if a not in uploaded]
        base = getattr(settings, "instance_url", None) or \
            (f"https://{link.instance_host}" if link.instance_host else None)
        if base:
            locations = [urls.image_url(base, a, link.lemmy_schema) for a in aliases]
        else:  # no host known: the direct URLs as Lemmy wrote them, without query strings
            for h in link.hits:
                for u in h.urls:
                    u = u.split("?", 1)[0]
                    if u.startswith(("http://", "https://")) and "/proxy" not in u \
                            and "image_proxy" not in u and u not in locations:
                        locations.append(u)
        times = sorted(u.published for u in link.uploads if u.published)
        if times:
            upload_time, upload_time_source = times[0], "Lemmy upload record"
        else:
            created = sorted(r.created_at for r in link.repo if r.created_at)
            if created:
                upload_time, upload_time_source = created[0], "pict-rs repo (hash created)"
        uploader = next((u for u in link.uploads if u.person), None)
        if uploader and uploader.person:
            p = uploader.person
            person = {"screenName": p.name, "displayName": p.display_name,
                      "profileUrl": p.actor_id, "espIdentifier": p.id, "email": uploader.email,
                      "local": p.local, "instance": p.instance_domain}
            ip_events = [{"ipAddress": lg.ip, "eventName": "Login", "dateTime": lg.published,
                          "userAgent": lg.user_agent} for lg in uploader.logins if lg.ip]
        if "lemmy-db" in link.sources_used:
            live = [h for h in link.hits if h.kind in ("post", "comment", "person", "community",
                                                       "site", "custom_emoji")
                    and not h.removed and not h.deleted]
            public = (f"likely yes: {len(live)} public row(s) not removed or deleted reference "
                      "it") if live else "no live public reference found"
    if upload_time is None:
        firsts = sorted(s["first_seen"] for s in storage if s["first_seen"])
        if firsts:
            upload_time, upload_time_source = firsts[0], "first seen by fsq (upper bound)"
    name = aliases[0] if aliases else (storage[0]["key"].rsplit("/", 1)[-1] if storage else None)
    return {
        "incidentType": INCIDENT_TYPE,
        "incidentDateTime": upload_time or row["created_at"],
        "file": {
            "fileName": name,
            "originalFileName": name,
            "originalFileHash": row["md5"], "hashType": "MD5",
            "locationOfFile": locations,
            "uploadedToEspTimestamp": upload_time,
            "uploadedToEspTimestamp_source": upload_time_source,
            "fileViewedByEsp": bool(viewed),
            "fileViewedByEsp_events": [{"seq": e["seq"], "ts": e["ts"], "actor": e["actor"],
                                        "action": e["action"],
                                        "purpose": e["details"].get("purpose"),
                                        "reviewer": e["details"].get("reviewer"),
                                        "level": e["details"].get("level")}
                                       for e in viewed],
            "views": previews,
            "publiclyAvailable": public,
        },
        "personOrUserReported": person,
        "ipCaptureEvents": ip_events,
    }


def incident_keys(conn: sqlite3.Connection, incident: str | int
                  ) -> tuple[sqlite3.Row, list[str]]:
    """The incident row and the storage keys that held its content (linkage input)."""
    row = resolve(conn, incident)
    return row, list(dict.fromkeys(s["key"] for s in _storage(conn, row)))


def build_model(conn: sqlite3.Connection, incident: str | int, settings: Any, *,
                linkage: Linkage | None = None, link: bool = True,
                now: datetime | None = None) -> dict[str, Any]:
    """The whole report for one incident (``incident`` = id or sha256 prefix)."""
    now = now or utcnow()
    row = resolve(conn, incident)
    iid = int(row["id"])
    storage = _storage(conn, row)
    verdict = conn.execute("SELECT * FROM verdicts WHERE id=?", (row["verdict_id"],)).fetchone() \
        if row["verdict_id"] else None
    others = [{"id": v["id"], "created_at": v["created_at"], "outcome": v["outcome"],
               "method": v["method"], "model_id": v["model_id"]}
              for v in conn.execute("SELECT * FROM verdicts WHERE sha256=? AND id IS NOT ? "
                                    "ORDER BY id", (row["sha256"], row["verdict_id"]))]
    holds, hold_facts = _holds(conn, iid, now)
    facts = retention.IncidentFacts.from_row(row)
    elig = retention.eligibility(facts, hold_facts, getattr(settings, "retention_days", 365),
                                 now)
    events, chain = _timeline(conn, iid)
    if linkage is None and link:
        keys = list(dict.fromkeys(s["key"] for s in storage))
        linkage = link_incident(conn, row["sha256"], keys, settings)
    ret_days = getattr(settings, "retention_days", 365)
    ret_end = retention_end(row, ret_days)
    active_holds = [h for h in holds if h["active"]]
    return {
        "generated_at": iso(now),
        "tool_version": __version__,
        "instance_url": getattr(settings, "instance_url", None),
        "incident": {
            "id": iid, "state": row["state"], "held": bool(active_holds),
            "display_state": retention.display_state(facts, hold_facts, now),
            "first_detected": row["created_at"], "origin": row["origin"],
            "sha256": row["sha256"], "md5": row["md5"], "size": row["size"],
            "width": row["width"], "height": row["height"], "media_type": row["media_type"],
            "quarantined_at": row["quarantined_at"],
        },
        "storage": storage,
        "classifier": classifier_view(verdict),
        "other_verdicts": others,
        "linkage": (lview := _linkage_view(linkage, settings)),
        "follow_up": follow_up(conn, iid, lview),
        "legal": {
            "retention_days": ret_days,
            "retention_basis": ("reported_at" if row["reported_at"] else
                                "quarantined_at" if row["quarantined_at"] else None),
            "retention_end": ret_end,
            "retention_over": bool(ret_end and parse_iso(ret_end) <= now),
            "holds": holds, "active_holds": len(active_holds),
            "purge_eligible": elig.eligible, "purge_reasons": elig.reasons,
            "reported_at": row["reported_at"], "report_reference": row["report_reference"],
            "cleared_at": row["cleared_at"], "cleared_by": row["cleared_by"],
            "clear_reason": row["clear_reason"], "clear_reference": row["clear_reference"],
            "released_at": row["released_at"], "release_reason": row["release_reason"],
            "purged_at": row["purged_at"], "purge_reason": row["purge_reason"],
        },
        "cybertip": _cybertip(row, linkage, storage, events, settings),
        "timeline": events,
        "chain": chain,
    }
