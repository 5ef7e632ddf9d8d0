"""`fsq hashes ...`: hash banks (confirmed, safe, imported lists) and PDQ of files."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import click

from fsq.cli.common import Exit, db_option, echo_json, json_option, load, open_db, table, warn
from fsq.errors import UsageError
from fsq.signals import banks, formats
from fsq.signals.files import file_signals


def _read_file(path: str, limit: int) -> bytes:
    p = Path(path)
    try:
        if p.stat().st_size > limit:
            raise UsageError(f"{path} is larger than FSQ_MAX_BYTES ({limit} bytes)")
        return p.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _read_list(path: str) -> tuple[list[formats.Signal], str, str]:
    """(signals, file name, sha256 of the file); UsageError with every bad line."""
    data = _read_file(path, 1 << 31)
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; a hash list is CSV or JSON lines") from None
    try:
        sigs = formats.parse(text)
    except formats.ListError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return sigs, Path(path).name, sha


@click.group("hashes")
def hashes() -> None:
    """Hash banks: match known content by sha256, md5 and PDQ without the model.

    Banks: `confirmed` (filled when a reviewer confirms an incident and by `fsq hashes add`),
    `safe` (released false positives, `fsq hashes add --safe`) and imported lists. A scan
    flags a file that matches an unsafe bank (PDQ within FSQ_PDQ_DISTANCE bits) and passes
    one within FSQ_PDQ_SAFE_DISTANCE bits of `safe` on every frame, both without the model.
    Lists use python-threatexchange / HMA signal types: pdq, md5, sha256, video_md5.

    \b
    Example:
      fsq hashes import partner-list.csv --bank partner
      fsq hashes list
    """


@hashes.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--bank", required=True, help="Bank to add to (created, kind unsafe, if new).")
@db_option
@json_option
def import_(file, bank, db, as_json):
    """Import a hash list (CSV with signal_type,signal_value columns, `TYPE VALUE` lines or
    JSON lines). Every bad line is reported with its number and nothing is imported then.
    Audited with the file's sha256.

    \b
    Example:
      fsq hashes import hma-export.csv --bank partner
    """
    settings = load(db=db)
    sigs, name, sha = _read_list(file)
    conn = open_db(settings)
    res = banks.import_signals(conn, bank, sigs, file_name=name, file_sha256=sha)
    if as_json:
        echo_json(res)
        return
    click.echo(f"bank {res['bank']}: {res['added']} added, {res['already_present']} already "
               f"present ({', '.join(f'{k} {v}' for k, v in sorted(res['by_type'].items()))})")
    if res["refused_md5_in_safe"]:
        warn(f"{res['refused_md5_in_safe']} md5 line(s) not added: the safe bank takes "
             "sha256 and pdq only")


@hashes.command("export")
@click.option("--bank", required=True, help="Bank to export.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv",
              show_default=True, help="CSV (HMA columns) or JSON lines.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write to this file instead of stdout.")
@db_option
def export(bank, fmt, output, db):
    """Export a bank as a hash list other tools (HMA, python-threatexchange) read.

    \b
    Example:
      fsq hashes export --bank confirmed --format csv -o confirmed.csv
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    text = formats.render(banks.bank_entries(conn, bank), fmt)
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    else:
        sys.stdout.write(text)


@hashes.command("list")
@click.option("--bank", help="Show this bank's entries instead of the banks.")
@db_option
@json_option
def list_(bank, db, as_json):
    """List the banks with their signal counts, or one bank's entries.

    \b
    Example:
      fsq hashes list --bank confirmed --json
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    if bank:
        rows = list(banks.bank_entries(conn, bank))
        if as_json:
            echo_json(rows)
        elif rows:
            click.echo(table(rows, ["id", "signal_type", "signal_value", "quality",
                                    "incident_id", "origin", "added_at"]))
        else:
            click.echo(f"bank {bank} is empty")
        return
    rows = banks.list_banks(conn)
    if as_json:
        echo_json(rows)
        return
    click.echo(table([{**r, "by_type": " ".join(f"{k}={v}" for k, v in
                                                 sorted(r["by_type"].items()))} for r in rows],
                     ["name", "kind", "signals", "by_type", "description"]))


@hashes.command("remove")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--bank", required=True, help="Bank to remove from.")
@click.option("--id", "ids", multiple=True, type=int, help="Entry id (repeatable; see "
              "`fsq hashes list --bank NAME`).")
@click.option("--all", "everything", is_flag=True,
              help="Every entry of the bank (an imported bank is then dropped).")
@db_option
@json_option
def remove(file, bank, ids, everything, db, as_json):
    """Remove entries: those listed in FILE (same formats as import), --id, or --all.
    Audited (with the file's sha256 when a file is given).

    \b
    Example:
      fsq hashes remove withdrawn.csv --bank partner
    """
    if sum(bool(x) for x in (file, ids, everything)) != 1:
        raise UsageError("give exactly one of FILE, --id or --all")
    settings = load(db=db)
    sigs, name, sha = _read_list(file) if file else (None, None, None)
    conn = open_db(settings, create=False)
    res = banks.remove_signals(conn, bank, signals=sigs, ids=list(ids), everything=everything,
                               file_name=name, file_sha256=sha)
    if as_json:
        echo_json(res)
    else:
        click.echo(f"bank {res['bank']}: {res['removed']} removed")


@hashes.command("add")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--bank", help="Bank to add to [confirmed].")
@click.option("--safe", is_flag=True, help="Add to the safe bank (never flagged again).")
@click.option("--incident", "incident_ref", help="Add an incident's hashes (id or sha256 "
              "prefix) instead of files; uses the PDQ recorded when it was scanned.")
@db_option
@json_option
def add(files, bank, safe, incident_ref, db, as_json):
    """Add files' or an incident's sha256, md5 and PDQ to a bank (the safe bank takes sha256
    and PDQ only). Audited.

    \b
    Example:
      fsq hashes add --incident 12
      fsq hashes add --safe lemmy-logo.png
    """
    if safe and bank and bank != banks.SAFE:
        raise UsageError("--safe adds to the safe bank; do not give another --bank")
    if bool(files) == bool(incident_ref):
        raise UsageError("give either FILE... or --incident ID")
    name = banks.SAFE if safe else (bank or banks.CONFIRMED)
    settings = load(db=db)
    conn = open_db(settings)
    if incident_ref:
        from fsq.custody.incidents import resolve
        res = banks.add_incident(conn, int(resolve(conn, incident_ref)["id"]), name)
    else:
        computed = []
        for f in files:
            s = file_signals(_read_file(f, settings.max_bytes), max_pixels=settings.max_pixels)
            if s.unreadable:
                warn(f"{f}: no PDQ ({s.unreadable}); adding its exact hashes only")
            elif not any(fr.usable for fr in s.frames):
                warn(f"{f}: PDQ quality below 50 (a flat image); adding exact hashes only")
            computed.append((Path(f).name, s.sha256, s.md5, s.frames))
        res = banks.add_files(conn, name, computed)
    if as_json:
        echo_json(res)
        return
    click.echo(f"bank {res['bank']}: {res['added']} added, {res['already_present']} already "
               f"present ({', '.join(f'{k} {v}' for k, v in sorted(res['by_type'].items()))})")
    if incident_ref and not res["by_type"].get("pdq"):
        warn("no usable PDQ on record for this incident (never decoded, or a flat image): "
             "only exact copies will match; add the file itself with `fsq hashes add FILE`")


@hashes.command("compute")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--csv", "as_csv", is_flag=True,
              help="Print an importable list (signal_type,signal_value,quality,note).")
@json_option
def compute(files, as_csv, as_json):
    """Print sha256, md5 and PDQ (with quality) of each file, as the scanner computes them,
    to check a file against a list by hand. A PDQ of quality below 50 is never matched.

    \b
    Example:
      fsq hashes compute photo.jpg --json
    """
    settings = load()
    out, rows, failed = [], [], False
    for f in files:
        try:
            s = file_signals(_read_file(f, settings.max_bytes), max_pixels=settings.max_pixels)
        except UsageError as exc:
            warn(exc.message)
            failed = True
            continue
        out.append(s.to_json(f))
        note = formats.clean_text(Path(f).name)
        rows += [{"signal_type": "sha256", "signal_value": s.sha256, "note": note},
                 {"signal_type": "md5", "signal_value": s.md5, "note": note}]
        rows += [{"signal_type": "pdq", "signal_value": fr.pdq, "quality": fr.quality,
                  "note": note} for fr in s.frames]
    if as_json:
        echo_json(out)
    elif as_csv:
        sys.stdout.write(formats.render(rows, "csv"))
    else:
        for d in out:
            click.echo(formats.clean_text(d["file"]) or "?")
            click.echo(f"  sha256   {d['sha256']}")
            click.echo(f"  md5      {d['md5']}")
            for fr in d["pdq"]:
                frame = f" frame {fr['frame']}" if len(d["pdq"]) > 1 else ""
                click.echo(f"  pdq      {fr['pdq']}  quality {fr['quality']}{frame}")
            if d["unreadable"]:
                click.echo(f"  pdq      none: {d['unreadable']}")
    if failed:
        raise Exit(1)


@hashes.command("rematch")
@click.option("--dry-run", is_flag=True, help="Only list what would be flagged.")
@db_option
@json_option
def rematch(dry_run, db, as_json):
    """Flag already-scanned clean objects whose content now matches an unsafe bank, using the
    hashes and PDQ recorded when they were scanned (nothing is downloaded or decoded). Then
    `fsq apply` quarantines them.

    \b
    Example:
      fsq hashes import partner.csv --bank partner && fsq hashes rematch && fsq apply
    """
    from fsq.ledger.db import transaction
    from fsq.pipeline import record_verdict
    from fsq.signals.match import PdqMatcher, find_rematches
    settings = load(db=db)
    conn = open_db(settings, create=False)
    matcher = PdqMatcher.load(conn, settings.pdq_distance, settings.pdq_safe_distance)
    found = find_rematches(conn, matcher)
    rows = []
    for obj, v in found:
        row = {"source": obj["source"], "key": obj["key"], "sha256": obj["sha256"],
               "method": v.method, "bank": (v.details or {}).get("bank"),
               "distance": (v.details or {}).get("distance"), "incident": None}
        if not dry_run:
            with transaction(conn):
                _, row["incident"] = record_verdict(
                    conn, object_id=obj["id"], sha256=obj["sha256"], md5=obj["md5"] or "",
                    size=obj["size"] or 0, verdict=v,
                    audit_details={"source": obj["source"], "key": obj["key"],
                                   "rematch": True, "dry_run": False})
        rows.append(row)
    res = {"flagged": 0 if dry_run else len(rows), "matches": rows, "dry_run": dry_run,
           "pdq_entries": matcher.size}
    if as_json:
        echo_json(res)
        return
    verb = "would flag" if dry_run else "flagged"
    click.echo(f"{verb} {len(rows)} object(s)" + (": run `fsq apply` to quarantine them"
                                                  if rows and not dry_run else ""))
    for r in rows:
        click.echo(f"  {r['source']} {formats.clean_text(r['key'])}: {r['method']} bank "
                   f"{r['bank']} distance {r['distance']}")


COMMANDS = [hashes]
