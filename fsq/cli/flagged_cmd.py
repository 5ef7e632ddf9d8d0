"""`fsq flagged`: flagged verdicts nothing has acted on yet."""

from __future__ import annotations

import json

import click

from fsq.cli.common import db_option, echo_json, json_option, load, open_db, show_key, table
from fsq.ledger import state


@click.command("flagged")
@click.option("--source", help="Only this source URL [default: all sources].")
@db_option
@json_option
def flagged(source, db, as_json):
    """List flagged objects not yet quarantined (e.g. from `fsq scan --dry-run`).

    Act on them later with `fsq apply`, without classifying again.

    \b
    Example:
      fsq flagged --json | jq '.[].key'
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    rows = []
    for r in state.flagged_pending(conn, source):
        details = json.loads(r["details"] or "{}")
        fired = [f.get("text") for f in details.get("fired", [])]
        rows.append({
            "incident": r["incident_id"], "source": r["source"], "key": r["key"],
            "sha256": r["sha256"], "md5": r["md5"], "size": r["size"],
            "media_type": r["media_type"], "method": r["method"], "reason": r["reason"],
            "fired": fired, "model_id": r["model_id"], "severity": r["severity"],
            "last_seen": r["last_seen"],
        })
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("nothing flagged is waiting for action")
        return
    click.echo(table([{**r, "key": show_key(r["key"]), "sha256": (r["sha256"] or "")[:16],
                       "fired": ",".join(
        f for f in r["fired"] if f)} for r in rows],
        ["incident", "key", "sha256", "size", "method", "fired"]))
    click.echo(f"\n{len(rows)} flagged object(s); quarantine them with `fsq apply`")


COMMANDS = [flagged]
