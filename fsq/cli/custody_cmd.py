"""`fsq custody re-sign`: have the custodian sign decisions made before signing existed."""

from __future__ import annotations

import sys

import click

from fsq.cli.common import (custodian_verifier, db_option, echo_json, json_option, load,
                            open_db, passphrase_file_option, table, unlock_custodian)
from fsq.errors import UsageError


@click.group("custody")
def custody() -> None:
    """Chain of custody: signed clearances and hold lifts.

    \b
    Example:
      fsq custody re-sign --dry-run     # what an upgraded install has left unsigned
      fsq custody re-sign --yes --passphrase-file /root/fsq.pass
    """


@custody.command("re-sign")
@click.option("--yes", is_flag=True, help="Sign without asking (after reviewing --dry-run).")
@click.option("--dry-run", is_flag=True, help="List the unsigned decisions; sign nothing.")
@passphrase_file_option
@db_option
@json_option
def resign(yes, dry_run, passphrase_file, db, as_json):
    """Sign the open clearances and hold lifts that have no custodian signature yet.

    Databases from before custodian signatures hold clearances and lifts that purge now
    refuses (exit 4). Run this once, as the custodian, after checking the list: each
    decision is signed only if it matches the audit log, with its retention start
    recomputed from the log.

    \b
    Examples:
      fsq custody re-sign --dry-run
      fsq custody re-sign --passphrase-file /root/fsq.pass --yes
    """
    from fsq.custody.decisions import resign_open, unsigned_open
    settings = load(db=db)
    conn = open_db(settings, create=False)
    if dry_run:
        todo = unsigned_open(conn, custodian_verifier(settings))
    else:
        listed = unsigned_open(conn, custodian_verifier(settings))
        if listed and not yes:
            if not sys.stdin.isatty():
                raise UsageError("signing needs --yes (no terminal to ask on); review the "
                                 "list with --dry-run first")
            click.echo(table(listed, ["kind", "incident", "hold", "by", "at", "reason"]),
                       err=True)
            click.confirm("Sign these decisions as the custodian", abort=True, err=True)
        todo = resign_open(conn, unlock_custodian(settings, passphrase_file)) if listed else []
    if as_json:
        echo_json({"dry_run": dry_run, "signed": [] if dry_run else todo,
                   "unsigned": todo if dry_run else []})
        return
    if not todo:
        click.echo("every open clearance and hold lift is signed; nothing to do")
        return
    click.echo(table(todo, ["kind", "incident", "hold", "by", "at", "reason"]))
    click.echo(f"{'would sign' if dry_run else 'signed'} {len(todo)}")


COMMANDS = [custody]
