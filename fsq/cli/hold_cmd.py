"""`fsq hold add|list|lift`: legal holds that block purge whatever the retention says."""

from __future__ import annotations

import click

from fsq.cli.common import (VaultCache, db_option, echo_json, json_option, load, open_db,
                            passphrase_file_option, table, unlock_custodian)
from fsq.custody.holds import add_hold, lift_hold, list_holds, parse_until
from fsq.custody.incidents import resolve
from fsq.custody.retention import HOLD_KINDS
from fsq.errors import NotFound, UsageError


@click.group("hold")
def hold() -> None:
    """Legal holds: while a hold is active, an incident's evidence is never purged.

    Kinds: statutory (e.g. the US preservation year, if you track it as a hold), voluntary
    (keeping it longer to fight exploitation; say why), law-enforcement (a preservation
    request, 18 U.S.C. 2703(f)), litigation.

    \b
    Examples:
      fsq hold add 12 --kind law-enforcement --reason "2703(f) FBI-2026-0173" --by "A. Admin"
      fsq hold list --active
      fsq hold lift 4 --reason "case closed" --by "A. Admin"
    """


def _hold_id(text: str) -> int:
    t = text.strip()
    if not t.isdigit():
        raise UsageError(f"{text!r} is not a hold number; list them with `fsq hold list`")
    return int(t)


@hold.command("add")
@click.argument("incident_ref", metavar="ID")
@click.option("--kind", required=True, type=click.Choice(HOLD_KINDS),
              help="What the hold is for.")
@click.option("--reason", required=True, help="Why (request number, case name...). Audited.")
@click.option("--by", help="Name of the person placing it (audited) [default: login@host].")
@click.option("--until", "until_text", metavar="DATE",
              help="Hold ends then (2027-05-01 = through that whole day, UTC; or an ISO time). "
                   "Omit for a hold that lasts until lifted.")
@db_option
@json_option
def add(incident_ref, kind, reason, by, until_text, db, as_json):
    """Put an incident on hold. ID is the incident number or a sha256 prefix.

    On an S3 vault with Object Lock, a hold with --until also extends the sealed objects'
    retention to that date (it can never be shortened again).

    \b
    Example:
      fsq hold add 12 --kind law-enforcement --reason "2703(f) request FBI-2026-0173" \\
          --until 2027-06-30 --by "A. Admin"
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    row = resolve(conn, incident_ref)
    until = parse_until(until_text) if until_text else None
    cache = VaultCache(settings)
    try:
        res = add_hold(conn, int(row["id"]), kind=kind, reason=reason, until=until,
                       vault_for=cache.vault, by=by)
    finally:
        cache.close()
    if as_json:
        echo_json(res)
        return
    click.echo(f"hold {res['id']} ({res['kind']}) on incident {res['incident_id']}"
               + (f" until {res['until']}" if res["until"] else " until lifted"))
    lock = res.get("object_lock")
    if lock and lock["entries"]:
        click.echo(f"  object lock of {lock['entries']} vault entr"
                   f"{'y' if lock['entries'] == 1 else 'ies'} extended to {lock['locked_until']}")
    if lock and lock["errors"]:
        for e in lock["errors"]:
            click.echo(f"fsq: warning: object lock not extended for entry {e['entry']}: "
                       f"{e['error']}", err=True)


@hold.command("list")
@click.option("--incident", "incident_ref", metavar="ID", help="Only holds of this incident.")
@click.option("--active", "active_only", is_flag=True, help="Only holds in force now.")
@db_option
@json_option
def list_(incident_ref, active_only, db, as_json):
    """List holds with their status: active, expired (its --until passed) or lifted.

    \b
    Example:
      fsq hold list --active
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    iid = int(resolve(conn, incident_ref)["id"]) if incident_ref else None
    rows = list_holds(conn, iid)
    if active_only:
        rows = [r for r in rows if r["status"] == "active"]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no holds")
        return
    click.echo(table([{**r, "incident": r["incident_id"]} for r in rows],
                     ["id", "incident", "kind", "status", "until", "created_by", "reason"]))


@hold.command("lift")
@click.argument("hold_ref", metavar="HOLD")
@click.option("--reason", required=True, help="Why the hold ends. Audited.")
@click.option("--by", help="Name of the person lifting it (audited) [default: login@host].")
@passphrase_file_option
@db_option
@json_option
def lift(hold_ref, reason, by, passphrase_file, db, as_json):
    """Lift a hold (HOLD is the number shown by `fsq hold list`). The incident can then be
    purged once it is cleared, past retention and under no other hold. The lift is signed
    with the custodian key (needs the vault passphrase); purge refuses an unsigned lift.

    \b
    Example:
      fsq hold lift 4 --reason "case 23-cv-0815 closed, counsel confirmed by mail 2027-03-02"
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    hold_id = _hold_id(hold_ref)
    if conn.execute("SELECT 1 FROM holds WHERE id=?", (hold_id,)).fetchone() is None:
        # Before the passphrase: a mistyped number needs no key to be refused.
        raise NotFound(f"no hold {hold_id}; list them with `fsq hold list`")
    signer = unlock_custodian(settings, passphrase_file)
    res = lift_hold(conn, hold_id, reason=reason, by=by, signer=signer)
    if as_json:
        echo_json(res)
        return
    click.echo(f"hold {res['id']} ({res['kind']}) on incident {res['incident_id']} lifted"
               + (" (it had already expired)" if res["was"] == "expired" else ""))
    if res["object_lock_until"]:
        click.echo(f"  note: the vault objects stay under object lock until "
                   f"{res['object_lock_until']}; purge cannot delete them before")


COMMANDS = [hold]
