"""`fsq purge`: destroy evidence after clearance, or at a law-enforcement request."""

from __future__ import annotations

import sys
from collections import Counter

import click

from fsq.cli.common import (Exit, VaultCache, custodian_paths, custodian_verifier, db_option,
                            echo_json, json_option, load, open_db, passphrase_file_option,
                            unlock_custodian, warn)
from fsq.custody.incidents import resolve
from fsq.errors import UsageError
from fsq.quarantine.purge import Purger, pictrs_client

# The US preservation period (18 U.S.C. 2258A(h), docs/legal.md). Below it, a routine purge
# can destroy evidence days or minutes after quarantine: say so, and ask on a terminal.
SHORT_RETENTION_DAYS = 365

_VERB = {"purged": "purged", "would-purge": "would purge", "kept": "keep",
         "would-finish": "would finish", "blocked": "BLOCKED", "failed": "FAILED",
         "unverified": "UNVERIFIED", "refused": "REFUSED", "already-purged": "already purged"}


@click.command("purge")
@click.option("--after-clearance", is_flag=True,
              help="Purge every incident that is cleared, past retention and under no active "
                   "hold.")
@click.option("--incident", "incident_ref", metavar="ID",
              help="Destroy this one incident now (needs --destruction-request).")
@click.option("--destruction-request", metavar="REFERENCE",
              help="Reference of the law-enforcement destruction request (audited).")
@click.option("--yes", is_flag=True, help="Confirm destroying evidence: of --incident, or with "
                                          "--after-clearance under a retention shorter than "
                                          f"{SHORT_RETENTION_DAYS} days.")
@click.option("--dry-run", is_flag=True, help="Show what would be destroyed and why the rest "
                                              "stays; change nothing.")
@passphrase_file_option
@db_option
@json_option
def purge(after_clearance, incident_ref, destruction_request, yes, dry_run, passphrase_file, db,
          as_json):
    """Destroy evidence for good: crypto-shred the wrapped data keys, delete the sealed blobs,
    check they are gone. The audit log keeps a minimal trace (hashes, times, who cleared it and
    why) and is never shortened.

    \b
    --after-clearance: exactly the incidents that a person cleared (`fsq clear`), whose
    retention (FSQ_RETENTION_DAYS from the report, or from quarantine if never reported) has
    run out, and that are under no active hold (`fsq hold list`).
    --incident ID --destruction-request REF --yes: one incident now, whatever retention and
    clearance say, because law enforcement asked (18 U.S.C. 2258B). Active holds still block
    it: lift them first.

    An interrupted purge is finished by the next run. With FSQ_PICTRS_PURGE_ON_PURGE=true
    (and FSQ_PICTRS_URL, FSQ_PICTRS_API_KEY) pict-rs is asked to purge the known aliases too.
    Purge needs the vault passphrase (not for --dry-run): it verifies the custodian signature
    of every clearance and hold lift, signs destruction requests, recomputes the retention
    start from the audit log, and checks each vault entry's sealed metadata against the
    database. Any mismatch refuses that incident (nothing destroyed).

    Exit 3 if storage or pict-rs failed, 4 if an object was still present after deletion or
    the database disagrees with the audit log, a signature or a sealed entry.

    \b
    Examples:
      fsq purge --after-clearance --dry-run
      fsq purge --after-clearance --json
      fsq purge --incident 12 --destruction-request "FBI-DR-2027-0042" --yes
    """
    if after_clearance == bool(incident_ref):
        raise UsageError("choose one: --after-clearance, or --incident ID "
                         "--destruction-request REFERENCE")
    if destruction_request is not None and not incident_ref:
        raise UsageError("--destruction-request goes with --incident ID")
    if incident_ref and not (destruction_request or "").strip():
        raise UsageError("--incident needs --destruction-request REFERENCE (the law-enforcement "
                         "request); routine purges use --after-clearance")
    settings = load(db=db)
    conn = open_db(settings, create=False)
    pictrs = None if dry_run else pictrs_client(settings)
    # Questions first, then the passphrase: nothing is unlocked for a purge the admin stops.
    row = None
    if after_clearance:
        if settings.retention_days < SHORT_RETENTION_DAYS and not dry_run:
            _short_retention(settings.retention_days, yes)
    else:
        row = resolve(conn, incident_ref)
        if not dry_run and not yes and row["state"] not in ("purged",):
            _confirm(int(row["id"]), row["sha256"], destruction_request)
    custodian: object = None
    vault_key: object = None
    if dry_run:  # no passphrase: the public custodian key checks signatures where it exists
        if custodian_paths(settings)[0].exists():
            custodian = custodian_verifier(settings)
    else:
        custodian, vault_key = unlock_custodian(settings, passphrase_file, vault_key=True)
    cache = VaultCache(settings)
    purger = Purger(conn, cache.vault, pictrs=pictrs, custodian=custodian,
                    private_key=vault_key)
    try:
        if after_clearance:
            mode = "after-clearance"
            results = purger.after_clearance(settings.retention_days, dry_run=dry_run)
        else:
            mode = "destruction-request"
            assert row is not None
            results = purger.destroy(int(row["id"]), destruction_request, dry_run=dry_run)
    finally:
        cache.close()
    counts = Counter(r["status"] for r in results)
    pictrs_failed = [r for r in results if (r.get("pictrs") or {}).get("error")]
    if as_json:
        echo_json({"mode": mode, "dry_run": dry_run, "results": results,
                   "purged": [r["incident"] for r in results if r["status"] == "purged"],
                   "counts": dict(counts)})
    else:
        _print(results, dry_run)
    if counts["unverified"] or counts["refused"]:
        raise Exit(4)
    if counts["failed"] or pictrs_failed or (mode == "destruction-request"
                                             and counts["blocked"]):
        raise Exit(3)


def _short_retention(days: int, yes: bool) -> None:
    warn(f"FSQ_RETENTION_DAYS={days} is shorter than {SHORT_RETENTION_DAYS} days (the US "
         "preservation year, docs/legal.md): cleared evidence is destroyed as soon as "
         f"{days} day(s) after its report, or after quarantine if never reported")
    if yes or not sys.stdin.isatty():
        return  # scripted runs were warned (stderr reaches cron mail and the journal)
    click.confirm(f"Purge cleared incidents under a {days}-day retention? This cannot be "
                  "undone", abort=True, err=True)


def _confirm(incident_id: int, sha256: str, reference: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError("destroying evidence needs --yes (no terminal to ask on)")
    click.confirm(f"Destroy the evidence of incident {incident_id} (sha256 {sha256[:16]}...) "
                  f"for destruction request {reference}? This cannot be undone", abort=True,
                  err=True)


def _print(results: list[dict], dry_run: bool) -> None:
    if not results:
        click.echo("no incidents hold evidence; nothing to purge")
        return
    acted = [r for r in results if r["status"] not in ("kept",)]
    kept = [r for r in results if r["status"] == "kept"]
    for r in acted + kept:
        verb = _VERB.get(r["status"], r["status"])
        extra = ""
        if r["status"] in ("purged", "would-purge") and r.get("entries") is not None:
            n = len(r["entries"])
            extra = f" [{n} vault entr{'y' if n == 1 else 'ies'}]"
        if r.get("resumed"):
            extra += " [resumed an interrupted purge]"
        click.echo(f"{verb:<14} incident {r['incident']:<5} {r['sha256'][:16]}  "
                   + "; ".join(x for x in r["reasons"] if x) + extra)
        p = r.get("pictrs")
        if p:
            if p.get("error"):
                click.echo(f"{'':<14} pict-rs cleanup FAILED: {p['error']} (the purge itself "
                           "is complete and recorded)")
            elif p.get("purged"):
                click.echo(f"{'':<14} pict-rs purged: {', '.join(p['purged'])}")
            elif p.get("note"):
                click.echo(f"{'':<14} pict-rs: {p['note']}")
    n = sum(1 for r in results if r["status"] in ("purged", "would-purge"))
    click.echo(f"{'would purge' if dry_run else 'purged'} {n}, kept {len(kept)}")


COMMANDS = [purge]
