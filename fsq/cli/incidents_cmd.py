"""`fsq incidents` and `fsq incident show`."""

from __future__ import annotations

import click

from fsq.cli.common import db_option, echo_json, json_option, load, open_db, table
from fsq.incidents import detail, resolve, summary


@click.command("incidents")
@click.option("--state", "states", multiple=True,
              help="Only incidents in this state (repeatable).")
@db_option
@json_option
def incidents(states, db, as_json):
    """List incidents (one per content sha256) and their state.

    \b
    Example:
      fsq incidents --state quarantined --json
    """
    settings = load(db=db)
    conn = open_db(settings)
    rows = [summary(conn, r) for r in conn.execute("SELECT * FROM incidents ORDER BY id")]
    if states:
        rows = [r for r in rows if r["state"] in states]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no incidents")
        return
    click.echo(table([{**r, "sha256": r["sha256"][:16]} for r in rows],
                     ["id", "state", "sha256", "size", "media_type", "keys", "vault_entries",
                      "created_at"]))


@click.group("incident")
def incident() -> None:
    """Inspect and manage one incident."""


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
    d = detail(conn, resolve(conn, incident_ref))
    if as_json:
        echo_json(d)
        return
    click.echo(f"incident {d['id']}: {d['state']}")
    for k in ("sha256", "md5", "size", "media_type", "width", "height", "created_at",
              "quarantined_at", "reported_at", "report_reference", "released_at",
              "release_reason", "cleared_at", "cleared_by", "purged_at"):
        if d.get(k) is not None:
            click.echo(f"  {k}: {d[k]}")
    if d["verdict"]:
        v = d["verdict"]
        fired = ", ".join(f.get("text", "?") for f in v["fired"]) or "-"
        click.echo(f"  verdict: {v['method']} ({v['reason']}); model {v['model_id']}, "
                   f"severity {v['severity']}; fired: {fired}")
    click.echo("  storage keys:")
    for o in d["storage_keys"]:
        click.echo(f"    {o['status']:<12} {o['source']}  {o['key']}")
    if d["entries"]:
        click.echo("  vault entries:")
        for e in d["entries"]:
            click.echo(f"    {e['entry']}  {e['state']:<12} {e['key']}  ({e['created_at']})")


COMMANDS = [incidents, incident]
