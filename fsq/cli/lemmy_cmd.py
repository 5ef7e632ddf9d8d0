"""`fsq lemmy remove|ban|purge` and `fsq uploader`: act in Lemmy with the evidence sealed first
(core: fsq.lemmy.actions, fsq.lemmy.uploader)."""

from __future__ import annotations

import click

from fsq.cli.common import db_option, echo_json, json_option, load, open_db, table, warn
from fsq.lemmy.actions import execute_action, plan_action
from fsq.lemmy.api import clean
from fsq.lemmy.uploader import uploader_view
from fsq.reports.render import sanitize_tree

_AUTH = ("Lemmy: FSQ_LEMMY_URL plus FSQ_LEMMY_JWT (an admin's token) or FSQ_LEMMY_USERNAME and "
         "FSQ_LEMMY_PASSWORD. Evidence: FSQ_LEMMY_DATABASE_URL (read-only) to find what an "
         "action destroys, FSQ_PICTRS_DATABASE_URL or FSQ_PICTRS_URL + FSQ_PICTRS_API_KEY to "
         "find the stored files, FSQ_SOURCE to read them, and the vault (FSQ_VAULT, "
         "FSQ_VAULT_PUBLIC_KEY) to seal them.")


def _common(f):
    f = json_option(f)
    f = db_option(f)
    f = click.option("--dry-run", is_flag=True,
                     help="Print the exact call and the evidence steps; seal nothing, send "
                          "nothing (only GET /site, for the version).")(f)
    f = click.option("--incident", "incident_ref", metavar="ID",
                     help="The incident this follows up (the sealed files are linked to it and "
                          "the action shows in its report).")(f)
    return click.option("--reason", required=True,
                        help="Why (Lemmy's modlog and fsq's audit log keep it).")(f)


def _run(action: str, target: str, *, reason: str, incident_ref: str | None, dry_run: bool,
         db: str | None, as_json: bool, **kw) -> None:
    settings = load(db=db)
    conn = open_db(settings, create=False)
    plan = plan_action(conn, settings, action, target, reason=reason, incident=incident_ref,
                       **kw)
    if dry_run:
        if as_json:
            echo_json(sanitize_tree({"dry_run": True, "plan": plan.to_dict()}, limit=None))
            return
        click.echo(f"dry run: {plan.action} {plan.target_kind} {plan.target_id} on Lemmy "
                   f"{plan.lemmy_version} (nothing is sealed or sent)")
        _print_files(plan.files)
        click.echo("steps:")
        for n, s in enumerate(plan.steps(), 1):
            click.echo(f"  {n}. {clean(s, 2000)}")
        for note in plan.notes:
            warn(clean(note, 500))
        return

    def progress(f, n, total):
        if not as_json:
            click.echo(f"evidence {n}/{total}: {f.alias} -> {f.status}"
                       + (f" (incident {f.incident_id}, entry {f.entry_id})"
                          if f.entry_id else ""), err=True)

    for note in plan.notes:
        warn(clean(note, 500))
    rec = execute_action(conn, settings, plan, progress=progress)
    if as_json:
        echo_json(sanitize_tree({"action": rec, "plan": plan.to_dict()}, limit=None))
        return
    sealed = sum(1 for f in plan.files if f.status == "sealed")
    kept = sum(1 for f in plan.files if f.status == "in-vault")
    click.echo(f"lemmy action {rec['id']}: {plan.action} {plan.target_kind} {plan.target_id} "
               f"done (HTTP {rec['http_status']}, Lemmy {plan.lemmy_version}); evidence: "
               f"{sealed} sealed now, {kept} already in the vault")


def _print_files(files) -> None:
    if not files:
        click.echo("files it would destroy: none")
        return
    click.echo(f"files it would destroy ({len(files)}):")
    click.echo(table([{"alias": clean(f.alias, 120), "why": f.why,
                       "stored as": clean(f.identifier or "?", 120), "evidence": f.status,
                       "entry": f.entry_id} for f in files],
                     ["alias", "why", "stored as", "evidence", "entry"]))


LEMMY_HELP = """Moderate through Lemmy's API with the evidence sealed first.

Lemmy's own purge and ban-with-data-removal delete images from pict-rs and the uploader and
login-IP records with them. `fsq lemmy` first works out every local image the action would
destroy, seals each one not already in the vault into an incident (origin lemmy-action,
linked to --incident), snapshots the linkage (target, reports, uploaders, login IPs), and only
then makes the call. If anything before the call fails, nothing is sent (exit 3, or 2 for
configuration); a rerun completes. Lemmy 0.19 (/api/v3) and 1.x (/api/v4) are detected from
GET /site. Every action is an audit event.

\b
Example:
  fsq lemmy ban uploader --remove-data --incident 12 --reason "CSAM" --dry-run

""" + _AUTH


@click.group("lemmy", help=LEMMY_HELP)
def lemmy() -> None:
    pass


@lemmy.command("remove")
@click.argument("kind", type=click.Choice(["post", "comment"]))
@click.argument("target_id", metavar="ID")
@_common
def remove(kind, target_id, reason, incident_ref, dry_run, db, as_json):
    """Remove (hide, reversibly) a post or comment. Deletes no media, so nothing is sealed; the
    linkage is still snapshotted.

    \b
    Examples:
      fsq lemmy remove post 123 --incident 12 --reason "CSAM, reported CT-1234" --dry-run
      fsq lemmy remove comment 456 --reason "CSAM"
    """
    _run(f"remove-{kind}", target_id, reason=reason, incident_ref=incident_ref,
         dry_run=dry_run, db=db, as_json=as_json)


@lemmy.command("ban")
@click.argument("person", metavar="PERSON")
@click.option("--remove-data", is_flag=True,
              help="Also remove their content (Lemmy deletes every image they uploaded: fsq "
                   "seals each one first).")
@click.option("--community", metavar="NAME",
              help="Ban from this community only (name, name@host or id) instead of the site.")
@click.option("--expires", metavar="DATE", help="Ban ends then (YYYY-MM-DD or ISO time, UTC).")
@_common
def ban(person, remove_data, community, expires, reason, incident_ref, dry_run, db, as_json):
    """Ban a person (id, name, name@host or actor URL) from the site or a community.

    With --remove-data on a site ban, every local upload of the person (local_image) and the
    images of their posts are sealed before the ban is sent.

    \b
    Examples:
      fsq lemmy ban uploader --remove-data --incident 12 --reason "CSAM" --dry-run
      fsq lemmy ban 42 --community pics --expires 2027-01-01 --reason "spam"
    """
    _run("ban", person, reason=reason, incident_ref=incident_ref, dry_run=dry_run, db=db,
         as_json=as_json, remove_data=remove_data, community=community, expires=expires)


@lemmy.command("purge")
@click.argument("kind", type=click.Choice(["post", "comment", "person"]))
@click.argument("target", metavar="ID")
@_common
def purge(kind, target, reason, incident_ref, dry_run, db, as_json):
    """Purge a post, comment or person from Lemmy for good, after sealing what it destroys (a
    post's URL image, thumbnail and body images; a comment's images; a person's uploads).

    \b
    Examples:
      fsq lemmy purge post 123 --incident 12 --reason "CSAM" --dry-run
      fsq lemmy purge person uploader@lemmy.example --reason "CSAM uploader"
    """
    _run(f"purge-{kind}", target, reason=reason, incident_ref=incident_ref, dry_run=dry_run,
         db=db, as_json=as_json)


@click.command("uploader")
@click.argument("person", metavar="PERSON")
@db_option
@json_option
def uploader(person, db, as_json):
    """Everything about one person: their uploads (local_image), login IPs, the incidents tied
    to their uploads and the Lemmy actions fsq took. Needs FSQ_LEMMY_DATABASE_URL. Text from
    Lemmy is untrusted and shown with control characters replaced.

    \b
    Examples:
      fsq uploader uploader@lemmy.example
      fsq uploader 42 --json
    """
    settings = load(db=db)
    conn = open_db(settings, create=False)
    view = uploader_view(conn, settings, person)
    if as_json:
        echo_json(sanitize_tree(view, limit=None))
        return
    p = view["person"]
    click.echo(f"person {p['id']}: {clean(p['name'], 100)}@{clean(p['instance_domain'], 100)} "
               f"({'local' if p['local'] else 'remote'}; {clean(p['actor_id'], 200)})")
    click.echo(f"uploads ({len(view['uploads'])}):")
    if view["uploads"]:
        click.echo(table([{"alias": clean(u["alias"], 120), "published": u["published"],
                           "stored as": ", ".join(clean(k, 120) for k in u["stored_as"]) or "?",
                           "incidents": ", ".join(map(str, u["incidents"]))}
                          for u in view["uploads"]],
                         ["alias", "published", "stored as", "incidents"]))
    click.echo(f"logins ({len(view['logins'])}):")
    for lg in view["logins"]:
        click.echo(f"  {clean(lg['ip'], 60)}  {lg['published']}  {clean(lg['user_agent'], 120)}")
    click.echo(f"incidents ({len(view['incidents'])}):")
    for i in view["incidents"]:
        click.echo(f"  {i['id']}  {i['state']}  origin {i['origin']}  {i['sha256']}")
    click.echo(f"lemmy actions ({len(view['actions'])}):")
    for a in view["actions"]:
        click.echo(f"  {a['id']}  {a['created_at']}  {a['action']}  {a['state']}")
    for n in view["notes"]:
        warn(n)
    click.echo("suggested:")
    for s in view["suggested"]:
        click.echo(f"  {s['label']}: {s['command']}")


COMMANDS = [lemmy, uploader]
