"""`fsq incidents`, `fsq incident show` and `fsq incident mark-reported`."""

from __future__ import annotations

import click

from fsq.cli.common import (db_option, echo_json, json_option, load, open_db,
                            passphrase_file_option, show_key, table, unlock_custodian)
from fsq.custody.holds import mark_reported, parse_report_time
from fsq.custody.incidents import detail, resolve, summary


@click.command("incidents")
@click.option("--state", "states", multiple=True,
              help="Only incidents in this state (repeatable): flagged, quarantined, reported, "
                   "held, cleared, purging, purged, released.")
@db_option
@json_option
def incidents(states, db, as_json):
    """List incidents (one per content sha256) and their state.

    The STATE column is the state that matters to a person: `held` while any hold is active,
    else cleared, reported, quarantined, ... RETENTION_END is when the retention period
    (FSQ_RETENTION_DAYS after the report, or after quarantine if never reported) runs out for
    incidents whose evidence is in the vault. In --json, `state` is the stored state and
    `display_state` the one shown here.

    \b
    Example:
      fsq incidents --state held --json
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    rows = [summary(conn, r, retention_days=settings.retention_days)
            for r in conn.execute("SELECT * FROM incidents ORDER BY id")]
    if states:
        rows = [r for r in rows if r["state"] in states or r["display_state"] in states]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no incidents")
        return
    click.echo(table([{**r, "sha256": r["sha256"][:16], "state": r["display_state"],
                       "retention_end": (r["retention_end"] or "")[:10]} for r in rows],
                     ["id", "state", "sha256", "size", "media_type", "keys", "vault_entries",
                      "retention_end", "created_at"]))


@click.group("incident")
def incident() -> None:
    """Inspect and manage one incident.

    \b
    Examples:
      fsq incident show 12
      fsq incident mark-reported 12 --reference CT-12345678
    """


@incident.command("show")
@click.argument("incident_ref", metavar="ID")
@db_option
@json_option
def show(incident_ref, db, as_json):
    """Show one incident: hashes, storage keys, vault entries, verdict.

    ID is the incident number or a sha256 prefix (8+ hex characters).

    \b
    Example:
      fsq incident show 3
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    d = detail(conn, resolve(conn, incident_ref), retention_days=settings.retention_days)
    from fsq.migrate.fedi_safety import notes_for
    d["legacy_notes"] = notes_for(conn, [(o["source"], o["key"]) for o in d["storage_keys"]])
    if as_json:
        echo_json(d)
        return
    click.echo(f"incident {d['id']}: {d['display_state']}")
    for k in ("sha256", "md5", "size", "media_type", "width", "height", "created_at",
              "quarantined_at", "reported_at", "report_reference", "retention_end",
              "released_at", "release_reason", "cleared_at", "cleared_by", "clear_reason",
              "clear_reference", "purged_at", "purge_reason"):
        if d.get(k) is not None:
            click.echo(f"  {k}: {d[k]}")
    for h in d["holds"]:
        status = "active" if h["active"] else ("lifted" if h["lifted_at"] else "expired")
        click.echo(f"  hold {h['id']} ({h['kind']}, {status})"
                   + (f" until {h['until']}" if h["until"] else "") + f": {h['reason']}")
    if d["verdict"]:
        v = d["verdict"]
        fired = ", ".join(f.get("text", "?") for f in v["fired"]) or "-"
        click.echo(f"  verdict: {v['method']} ({v['reason']}); model {v['model_id']}, "
                   f"severity {v['severity']}; fired: {fired}")
    click.echo("  storage keys:")
    for o in d["storage_keys"]:
        click.echo(f"    {o['status']:<12} {o['source']}  {show_key(o['key'])}")
    if d["entries"]:
        click.echo("  vault entries:")
        for e in d["entries"]:
            click.echo(f"    {e['entry']}  {e['state']:<12} {show_key(e['key'])}  "
                       f"({e['created_at']})")
    for n in d["legacy_notes"]:  # history imported from another tool: never a finding
        click.echo(f"  {n['tool']} (imported, {n['recorded_at'] or 'date unknown'}): {n['key']}: "
                   f"{n['note']}")


@incident.command("mark-reported")
@click.argument("incident_ref", metavar="ID")
@click.option("--reference", required=True,
              help="The report's reference, e.g. the CyberTipline report id (audited).")
@click.option("--at", "at_text", metavar="TIME",
              help="When the report was made (ISO 8601, UTC if no zone); default now.")
@passphrase_file_option
@db_option
@json_option
def mark_reported_cmd(incident_ref, reference, at_text, passphrase_file, db, as_json):
    """Record that an incident was reported. Its retention clock starts then
    (FSQ_RETENTION_DAYS, 365 by default: the US preservation year of 18 U.S.C. 2258A(h)).

    Marking again replaces the time and reference; the audit log keeps the earlier ones.
    On an incident already cleared this moves the retention start its signed clearance
    names, so it needs the vault passphrase and re-signs the clearance.

    \b
    Example:
      fsq incident mark-reported 12 --reference "CyberTipline 123456789" \\
          --at 2026-11-20T14:05:00Z
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    row = resolve(conn, incident_ref)
    at = parse_report_time(at_text) if at_text else None
    signer = unlock_custodian(settings, passphrase_file) if row["cleared_at"] else None
    res = mark_reported(conn, int(row["id"]), reference=reference, at=at, signer=signer)
    d = summary(conn, resolve(conn, row["id"]), retention_days=settings.retention_days)
    res["retention_end"] = d["retention_end"]
    if as_json:
        echo_json(res)
        return
    click.echo(f"incident {res['incident']} marked reported at {res['reported_at']} "
               f"({res['reference']})")
    if res["retention_end"]:
        click.echo(f"  retention ends {res['retention_end']}")


COMMANDS = [incidents, incident]
