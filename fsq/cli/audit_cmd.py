"""`fsq audit verify|head|log`: the hash-chained audit log."""

from __future__ import annotations

import json

import click

from fsq.cli.common import Exit, db_option, echo_json, json_option, load, open_db, table
from fsq.errors import IntegrityError
from fsq.ledger import audit as auditlog
from fsq.ledger.db import integrity_check


@click.group("audit")
def audit() -> None:
    """The tamper-evident audit log: verify the chain, print its head, show events.

    \b
    Examples:
      fsq audit verify
      fsq audit head >> /secure/elsewhere/fsq-anchors.txt
      fsq audit log --subject incident:3
    """


@audit.command("verify")
@click.option("--anchor", help="SEQ:HASH from an earlier `fsq audit head`, kept elsewhere; "
                               "proves the log was not rewritten or truncated since.")
@db_option
@json_option
def verify(anchor, db, as_json):
    """Recompute the hash chain; exit 4 naming the first bad row if it is broken.

    \b
    Examples:
      fsq audit verify
      fsq audit verify --anchor 1042:3f5c...e9
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    # A damaged database could hide or garble rows the chain walk never sees: check the
    # whole file (indexes included) before calling the log intact.
    damage = integrity_check(conn)
    if damage:
        raise IntegrityError(f"state database {settings.db} is damaged ({'; '.join(damage)[:300]}"
                             "); the audit log cannot be called intact. Keep the file and "
                             "restore the last backup (docs/operations.md)")
    res = auditlog.verify(conn, anchor)
    if as_json:
        echo_json({"ok": res.ok, "rows": res.rows, "head": res.head, "bad_seq": res.bad_seq,
                   "problem": res.problem})
    elif res.ok:
        click.echo(f"audit log intact: {res.rows} rows, head {res.head}"
                   + (" (anchor found)" if anchor else ""))
    else:
        click.echo(f"audit log BROKEN at row {res.bad_seq}: {res.problem}", err=True)
    if not res.ok:
        raise Exit(4)


@audit.command("head")
@db_option
def head(db):
    """Print SEQ:HASH of the last row. Store it elsewhere (ticket, mail, second host) as an
    anchor for `fsq audit verify --anchor`.

    \b
    Example:
      fsq audit head >> /secure/elsewhere/fsq-anchors.txt
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    h = auditlog.head(conn)
    click.echo(h or "0:" + auditlog.GENESIS)


@audit.command("log")
@click.option("--subject", help="Only events about this subject, e.g. incident:3.")
@click.option("--limit", type=int, default=50, show_default=True, help="Last N events.")
@db_option
@json_option
def log(subject, limit, db, as_json):
    """Show audit events (newest last).

    \b
    Example:
      fsq audit log --subject incident:3
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    rows = list(auditlog.events(conn, subject=subject))[-limit:]
    out = [{"seq": r["seq"], "ts": r["ts"], "actor": r["actor"], "command": r["command"],
            "action": r["action"], "subject": r["subject"],
            "details": json.loads(r["details"])} for r in rows]
    if as_json:
        echo_json(out)
        return
    click.echo(table([{**r, "details": json.dumps(r["details"], sort_keys=True)[:80]}
                      for r in out], ["seq", "ts", "actor", "action", "subject", "details"]))


COMMANDS = [audit]
