"""`fsq review` (the local review console) and `fsq export` (the evidence package)."""

from __future__ import annotations

import click

from fsq.cli.common import (VaultCache, db_option, echo_json, json_option, load, open_db,
                            passphrase_file_option, private_key,
                            unlock_custodian, custodian_paths)
from fsq.custody.incidents import resolve
from fsq.ledger import audit


def _reviewer(settings, given: str | None) -> str:
    return (given or settings.review_reviewer or audit.actor()).strip()


@click.command("review")
@click.option("--listen", help="HOST:PORT [FSQ_REVIEW_LISTEN, 127.0.0.1:8750]. Anything but "
                               "loopback needs --allow-remote.")
@click.option("--reviewer", help="Your name, recorded with every view and decision "
                                 "[FSQ_REVIEW_REVIEWER, default the OS user@host].")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --listen address. Put TLS in front of it (the session "
                   "cookie is then marked Secure) and list the public name in "
                   "FSQ_REVIEW_ALLOWED_HOSTS.")
@click.option("--idle-minutes", type=float,
              help="Lock a session after this many idle minutes [FSQ_REVIEW_IDLE_MINUTES, 15].")
@passphrase_file_option
@db_option
def review(listen, reviewer, allow_remote, idle_minutes, passphrase_file, db):
    """Open the review console: a local web page to look at what fsq caught and decide.

    Asks for the vault passphrase (like `fsq release`), keeps the private key in memory
    only, and prints a one-time login URL; open it in a browser on this machine. The queue
    lists incidents needing review first; an incident page shows the report's facts and a
    small, blurred, grayscale preview you can step up one click at a time. Every preview is
    an audit event (`evidence.viewed`). Decisions (confirm, false positive, not CSAM but
    keep, escalate, hold, mark reported, clear) each need a reason and are audited.
    Keys: j/k next/previous, c confirm, f false positive. Stop with Ctrl-C. See
    docs/review.md for the threat model.

    \b
    Example:
      fsq review --reviewer alice
      # from another machine: ssh -L 8750:127.0.0.1:8750 fsq-host, then open the URL
    """
    from fsq.review.decisions import Lifecycle
    from fsq.review.server import build, check_listen, run

    def text(v):
        return None if v is None else str(v)

    settings = load(db=db, review_listen=listen, review_idle_minutes=text(idle_minutes))
    check_listen(settings.review_listen, allow_remote)   # before asking for the passphrase
    conn = open_db(settings, create=False)
    # One passphrase unlocks the vault key (previews, release) and the custodian key (signed
    # clearances; a re-signed clearance when an incident is marked reported). Installs made
    # before the custodian key existed review without it and cannot clear from the console.
    signer = None
    if custodian_paths(settings)[1].exists():
        signer, key = unlock_custodian(settings, passphrase_file, vault_key=True)
    else:
        key = private_key(settings, passphrase_file)
        click.echo("fsq review: no custodian key, so clearing is disabled in the console; add "
                   "one with `fsq key custodian-init`", err=True)
    cache = VaultCache(settings)
    who = _reviewer(settings, reviewer)

    def announce(url: str) -> None:
        click.echo(f"fsq review: session locked or ended; new one-time login link: {url}")

    try:
        running = build(conn, settings, lifecycle=Lifecycle(key, cache.vault, cache.source, signer),
                        reviewer=who, allow_remote=allow_remote, announce=announce)
        audit.append(conn, "review.started", "review",
                     {"reviewer": who, "listen": f"{running.host}:{running.port}",
                      "allow_remote": allow_remote})
        try:
            url = running.url(running.console.sessions.new_login_token())
            if allow_remote:
                click.echo("fsq review: listening beyond loopback; make sure TLS is in front "
                           "and the name is in FSQ_REVIEW_ALLOWED_HOSTS", err=True)
            click.echo(f"fsq review: reviewer {who}; open this one-time login link (it works "
                       f"once):\n  {url}")
            run(running)
        finally:
            audit.append(conn, "review.stopped", "review", {"reviewer": who})
    finally:
        cache.close()


@click.command("export")
@click.argument("incident")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="New (or empty) directory to write; created 0700.")
@click.option("--reviewer", help="Who exports (audited) [FSQ_REVIEW_REVIEWER, OS user@host].")
@passphrase_file_option
@db_option
@json_option
def export(incident, out_dir, reviewer, passphrase_file, db, as_json):
    """Write an incident's evidence package for a report (e.g. a CyberTipline report).

    The directory gets the original bytes (decrypted, checked against the incident's sha256,
    mode 0600), manifest.json (hashes, size, media type, storage keys, aliases, upload time,
    Lemmy URLs, uploader, views), report.html and audit.json (the incident's audit rows and
    the chain head). Refuses an existing non-empty directory. Audited as evidence.exported.

    \b
    Example:
      fsq export 12 --out /root/cybertip-12 --passphrase-file /root/fsq.pass
    """
    from fsq.review.export import export_incident
    settings = load(db=db)
    conn = open_db(settings, create=False)
    row = resolve(conn, incident)
    key = private_key(settings, passphrase_file)
    cache = VaultCache(settings)
    try:
        manifest = export_incident(conn, row, out_dir, private_key=key, vault_for=cache.vault,
                                   settings=settings, by=_reviewer(settings, reviewer))
    finally:
        cache.close()
    if as_json:
        from fsq.reports.render import sanitize_tree
        echo_json(sanitize_tree(manifest, limit=None))
    else:
        click.echo(f"incident {manifest['incident']}: exported to {manifest['directory']}")
        for name, f in manifest["files"].items():
            click.echo(f"  {name}  sha256 {f['sha256']}")


COMMANDS = [review, export]
