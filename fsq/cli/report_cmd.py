"""`fsq report`: write per-incident HTML reports (see fsq.reports.render)."""

from __future__ import annotations

import click

from fsq.cli.common import Exit, db_option, echo_json, json_option, load, open_db, warn
from fsq.custody.incidents import resolve
from fsq.errors import UsageError
from fsq.reports.render import generate_report, sanitize_tree

OPEN_EXCLUDED = ("purged", "released")


@click.command("report")
@click.argument("incident_refs", metavar="[ID]...", nargs=-1)
@click.option("--all", "all_", is_flag=True,
              help="Report every open incident (all but purged and released ones).")
@click.option("--require-linkage", is_flag=True,
              help="Exit 3 if a linkage source is unavailable or not configured (the reports "
                   "are still written).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output directory (FSQ_REPORTS_DIR, default ./reports); made 0700.")
@db_option
@json_option
def report(incident_refs, all_, require_linkage, out_dir, db, as_json):
    """Write an incident report to <reports dir>/<ID>.html (earlier versions are kept).

    One self-contained HTML file per incident (no scripts, no external requests, never the
    image): summary and hashes, the storage keys and vault entries, the classifier's evidence,
    the pict-rs aliases and every Lemmy post, comment, message, profile, community, emoji and
    report that uses them, the uploader with login IPs, legal status, CyberTipline fields and
    the audit timeline. Each report written is an audit event.

    Linkage sources are FSQ_PICTRS_DATABASE_URL (pict-rs 0.5 PostgreSQL repo), FSQ_PICTRS_URL +
    FSQ_PICTRS_API_KEY (pict-rs internal API), and FSQ_LEMMY_DATABASE_URL (read-only). A
    missing or unreachable source is named in the report and warned about; the command still
    exits 0 unless --require-linkage is given (then 3).

    <ID>.html is always the newest report with the most linkage: the one it replaces is kept as
    <ID>.<UTC timestamp>.html, and a report that lost a source the current one had (e.g. made
    while Lemmy's PostgreSQL is down) is written beside it as <ID>.<timestamp>.html, with a
    warning, instead of over it.

    \b
    Example:
      fsq report 12
      fsq report --all --require-linkage --out /srv/fsq/reports
    """
    if all_ and incident_refs:
        raise UsageError("give incident IDs or --all, not both")
    if not all_ and not incident_refs:
        raise UsageError("which incident? give an ID (see `fsq incidents`) or --all")
    settings = load(db=db, reports_dir=out_dir)
    conn = open_db(settings, create=False)
    if all_:
        ids = [r["id"] for r in conn.execute(
            "SELECT id FROM incidents WHERE state NOT IN (?, ?) ORDER BY id", OPEN_EXCLUDED)]
    else:
        ids = list(dict.fromkeys(int(resolve(conn, ref)["id"]) for ref in incident_refs))

    results = []
    incomplete: list[int] = []
    for iid in ids:
        res = generate_report(conn, iid, settings)
        problems = res.linkage.problems() if res.linkage is not None else []
        if problems:
            incomplete.append(iid)
            for p in problems:
                warn(f"incident {iid}: linkage incomplete: {p}")
        pl = res.placement
        if pl is not None and not pl.replaces_current:
            warn(f"incident {iid}: this report has less linkage than the current "
                 f"{iid}.html (no {', '.join(pl.lost_sources)} now); written beside it as "
                 f"{pl.name}, {iid}.html kept. Regenerate when the source is back")
        results.append({"incident": iid, "path": str(res.path), "sha256": res.sha256,
                        "linkage_complete": not problems, "linkage_problems": problems,
                        "current": pl is None or pl.replaces_current,
                        "previous_kept_as": pl.superseded_as if pl else None,
                        "linkage_lost": pl.lost_sources if pl else [],
                        "report": res.model})
        if not as_json:
            click.echo(f"incident {iid}: {res.path}")

    if as_json:
        # sanitize: no bidi/control characters from Lemmy reach a terminal or a log
        echo_json(sanitize_tree({"reports": results}, limit=None))
    elif not ids:
        click.echo("no open incidents")
    if require_linkage and incomplete:
        click.echo(f"fsq: error: linkage incomplete for incident(s) "
                   f"{', '.join(map(str, incomplete))} and --require-linkage was given; "
                   "configure or fix the sources named above", err=True)
        raise Exit(3)


COMMANDS = [report]
