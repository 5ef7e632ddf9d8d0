"""`fsq clear`: a person states that an incident's evidence may be destroyed."""

from __future__ import annotations

import click

from fsq.cli.common import (db_option, echo_json, json_option, load, open_db,
                            passphrase_file_option, unlock_custodian)
from fsq.custody.holds import clear_incident, holds_for
from fsq.custody.incidents import resolve
from fsq.custody.retention import IncidentFacts, eligibility
from fsq.timeutil import utcnow


@click.command("clear")
@click.argument("incident_refs", metavar="ID...", nargs=-1, required=True)
@click.option("--by", required=True, help="Name of the person clearing it (audited).")
@click.option("--reason", required=True, help="Why it may be destroyed (audited).")
@click.option("--reference", help="Ticket, decision or counsel reference (audited).")
@passphrase_file_option
@db_option
@json_option
def clear(incident_refs, by, reason, reference, passphrase_file, db, as_json):
    """Clear one or more incidents for destruction once retention allows.

    Clearance destroys nothing. `fsq purge --after-clearance` destroys the evidence of
    cleared incidents whose retention (FSQ_RETENTION_DAYS after the report, or after
    quarantine if never reported) has run out and that are under no active hold.

    The clearance is signed with the custodian key, so it needs the vault passphrase; purge
    verifies the signature and refuses (exit 4) a clearance that is not signed.

    Several IDs are cleared one after the other with the same --by/--reason; the first one
    that cannot be cleared stops the command (those before it stay cleared). --json prints
    one object per ID (a list when several are given).

    \b
    Example:
      fsq clear 12 --by "A. Admin" --reason "reported, preservation year over" \\
          --reference TICKET-88
      fsq clear 12 13 17 --by "A. Admin" --reason "false positives, reviewed"
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    rows = [resolve(conn, ref) for ref in dict.fromkeys(incident_refs)]  # all exist, or none
    signer = unlock_custodian(settings, passphrase_file)   # one passphrase for all
    out = []
    for row in rows:
        res = clear_incident(conn, int(row["id"]), by=by, reason=reason, reference=reference,
                             signer=signer)
        el = eligibility(IncidentFacts.from_row(resolve(conn, row["id"])),
                         holds_for(conn, int(row["id"])), settings.retention_days, utcnow())
        res["purge_eligible"] = el.eligible
        res["waiting_for"] = [] if el.eligible else el.reasons
        out.append(res)
        if as_json:
            continue
        click.echo(f"incident {res['incident']} cleared by {res['cleared_by']}")
        if el.eligible:
            click.echo("  the next `fsq purge --after-clearance` will destroy its evidence")
        else:
            click.echo("  kept for now: " + "; ".join(el.reasons))
    if as_json:
        echo_json(out[0] if len(out) == 1 else out)


COMMANDS = [clear]
