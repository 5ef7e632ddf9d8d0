"""`fsq import fedi-safety`: bring the old tool's history into the ledger (fsq.migrate)."""

from __future__ import annotations

import click

from fsq.cli.common import (VaultCache, db_option, echo_json, host_key_option, json_option, load,
                            open_db)


@click.group("import")
def import_() -> None:
    """Import history from other tools (as history, never as findings).

    \b
    Example:
      fsq import fedi-safety /opt/fedi-safety/lemmy_safety.db --source s3://pictrs
    """


@import_.command("fedi-safety")
@click.argument("legacy_db", metavar="PATH/lemmy_safety.db", type=click.Path(dir_okay=False))
@click.option("--source", help="The store fedi-safety watched: its file names are keys in it "
                               "[FSQ_SOURCE].")
@host_key_option
@db_option
@json_option
def fedi_safety(legacy_db, source, accept_new_host_key, db, as_json):
    """Import fedi-safety's lemmy_safety.db: what it checked, flagged and deleted.

    Each row becomes history, never a confirmed finding. A file that still exists is queued
    for a normal scan (the next `fsq scan --all` decides it; the old flag is kept as a note).
    A file that is gone is recorded in the audit log with its key and the old tool's date
    ("removed by fedi-safety before fsq" if the old tool had flagged it). Every old CSAM flag
    is marked "legacy flag, unverified": fedi-safety also flagged every file it could not
    open. The fedi-safety file is only read. Importing again changes nothing.

    \b
    Examples:
      fsq import fedi-safety /opt/fedi-safety/lemmy_safety.db \\
          --source file:///srv/lemmy/volumes/pictrs/files
      fsq import fedi-safety lemmy_safety.db --source s3://pictrs --json
    """
    from fsq.migrate.fedi_safety import import_rows, open_legacy
    settings = load(source=source, db=db, sftp_accept_new_host_key=accept_new_host_key)
    legacy = open_legacy(legacy_db)
    conn = open_db(settings, create=False)
    cache = VaultCache(settings)
    try:
        src = cache.source(settings.source)
        res = import_rows(conn, legacy, src)
    finally:
        cache.close()
        legacy.close()
    if as_json:
        echo_json(res)
        return
    click.echo(f"fedi-safety import into {res['source']}: {res['imported']} row(s) imported, "
               f"{res['already_imported']} already imported earlier")
    lines = [("queued", "file present, queued for a normal scan"),
             ("already_scanned", "file present, fsq already has its own verdict"),
             ("removed", "gone, flagged by fedi-safety: removed by it before fsq (audited)"),
             ("gone", "gone, not flagged by fedi-safety (audited)"),
             ("invalid", "not a valid key, or could not be checked")]
    for k, text in lines:
        if res[k]:
            click.echo(f"  {res[k]:>6}  {text}")
    if res["legacy_csam_flags"]:
        click.echo(f"  {res['legacy_csam_flags']:>6}  carried fedi-safety's CSAM flag: legacy "
                   "flag, unverified (it flagged unreadable files too)")
    if res["queued"]:
        click.echo(f"next: fsq scan --all --dry-run --source {res['source']}")


COMMANDS = [import_]
