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
@click.option("--witness", "use_witness", is_flag=True,
              help="Also check the chain against every head in FSQ_AUDIT_WITNESS (detects a "
                   "truncated or rewritten and re-chained log).")
@db_option
@json_option
def verify(anchor, use_witness, db, as_json):
    """Recompute the hash chain; exit 4 naming the first bad row if it is broken.

    \b
    Examples:
      fsq audit verify
      fsq audit verify --anchor 1042:3f5c...e9
      FSQ_AUDIT_WITNESS=/mnt/other-host/fsq-heads.jsonl fsq audit verify --witness
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
    witnessed: dict | None = None
    if use_witness:
        witnessed = _check_witness(conn, settings)
    ok = res.ok and (witnessed is None or not witnessed["problems"])
    if as_json:
        echo_json({"ok": ok, "rows": res.rows, "head": res.head, "bad_seq": res.bad_seq,
                   "problem": res.problem, "witness": witnessed})
    else:
        if res.ok:
            click.echo(f"audit log intact: {res.rows} rows, head {res.head}"
                       + (" (anchor found)" if anchor else ""))
        else:
            click.echo(f"audit log BROKEN at row {res.bad_seq}: {res.problem}", err=True)
        if witnessed is not None:
            for p in witnessed["problems"]:
                click.echo(f"witness: {p}", err=True)
            if not witnessed["problems"]:
                click.echo(f"witness: {witnessed['heads']} witnessed head(s) match the chain")
    if not ok:
        raise Exit(4)


def _check_witness(conn, settings) -> dict:
    from fsq.cli.common import custodian_paths
    from fsq.custody import witness
    from fsq.custody.custodian import Verifier, load_verifier
    from fsq.errors import ConfigError, FsqError, UsageError
    if not settings.audit_witness:
        raise UsageError("--witness needs FSQ_AUDIT_WITNESS (the file, s3:// or syslog:// "
                         "witness the heads were appended to)")
    heads = witness.Witness(settings.audit_witness, settings).heads()
    verifiers = {}
    try:
        v = load_verifier(custodian_paths(settings)[0])
        verifiers[v.fingerprint] = v
    except FsqError:
        pass
    from fsq.runtime import public_key_path
    try:
        from cryptography.hazmat.primitives import serialization
        pem = witness.scanner_key_path(public_key_path(settings)).with_suffix(".pub")
        pub = serialization.load_pem_public_key(pem.read_bytes())
        sv = Verifier(pub)  # type: ignore[arg-type]
        verifiers[sv.fingerprint] = sv
    except (OSError, ValueError):
        pass
    if not heads:
        raise ConfigError(f"the audit witness {settings.audit_witness} holds no heads yet")
    return {"heads": len(heads), "problems": witness.verify_heads(conn, heads, verifiers)}


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
