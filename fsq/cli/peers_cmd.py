"""`fsq peers ...`: instances whose signed verdicts this one trusts (docs/federation.md)."""

from __future__ import annotations

import click

from fsq.cli.common import Exit, db_option, echo_json, json_option, load, open_db, table
from fsq.runtime import pull_limits


@click.group("peers")
def peers() -> None:
    """Trusted peer instances: pinned keys, pulls, what was refused.

    \b
    Example:
      fsq peers add https://fsq.friend.example --key 3f1c...e9   # key id from their keys.json
      fsq peers pull
      fsq peers rejections
    """


@peers.command("add")
@click.argument("url")
@click.option("--key", "key_id", required=True,
              help="The peer's key id (64 hex; its admin prints it with `fsq attest key`). "
                   "Get it over a channel you trust, not from the peer's website.")
@click.option("--keys-file", type=click.Path(dir_okay=False, exists=True),
              help="Take the public key from this `fsq attest export` file instead of "
                   "fetching URL/.well-known/fsq/keys.json (offline peers).")
@db_option
@json_option
def add(url, key_id, keys_file, db, as_json):
    """Trust URL's statements signed by the key KEYID (pinned now; a peer that changes its key
    is refused until it is added again). Adding an existing URL replaces its pinned key.

    \b
    Example:
      fsq peers add https://lemmy.friend.example --key 9f86d081884c7d65...
    """
    from fsq.exchange.peers import add_peer, keys_doc_from_export
    settings = load(db=db)
    conn = open_db(settings)
    doc = None
    if keys_file:
        with open(keys_file, "rb") as fh:
            doc = keys_doc_from_export(fh.readline(64 * 1024))
    res = add_peer(conn, url, key_id, keys_doc=doc, limits=pull_limits(settings))
    if as_json:
        echo_json(res)
    else:
        click.echo(f"peer {res['url']} added, key {res['keyid'][:16]}... pinned"
                   + (" (replacing the previous key)" if res["replaced"] else ""))


@peers.command("list")
@db_option
@json_option
def list_cmd(db, as_json):
    """List peers, their pinned keys, cursors, statement counts and last errors.

    \b
    Example:
      fsq peers list --json
    """
    from fsq.exchange.peers import list_peers
    rows = list_peers(open_db(load(db=db), create=False))
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo("no peers; add one with `fsq peers add URL --key KEYID`")
    else:
        click.echo(table([{**r, "keyid": r["keyid"][:16], "last_error": r["last_error"] or ""}
                          for r in rows],
                         ["url", "keyid", "cursor", "safe", "unsafe", "revoked", "rejected",
                          "last_ok_at", "last_error"]))


@peers.command("remove")
@click.argument("url")
@db_option
@json_option
def remove(url, db, as_json):
    """Stop trusting URL: forget its key and statements (they stop applying at once).

    \b
    Example:
      fsq peers remove https://lemmy.friend.example
    """
    from fsq.exchange.peers import remove_peer
    res = remove_peer(open_db(load(db=db), create=False), url)
    if as_json:
        echo_json(res)
    else:
        click.echo(f"peer {res['url']} removed ({res['statements_dropped']} statement(s) "
                   "dropped)")


@peers.command("pull")
@click.argument("url", required=False)
@click.option("--restart", is_flag=True, help="Pull from the beginning, not the stored cursor.")
@db_option
@json_option
def pull(url, restart, db, as_json):
    """Fetch new statements from one peer (or all), verify each, store the good ones.

    Exit 3 if a peer is down or sent a response that was refused (recorded; the next pull
    resumes from the stored cursor), 4 if any statement failed verification (recorded, see
    `fsq peers rejections`). `fsq scan --daemon` pulls before each pass.

    \b
    Example:
      fsq peers pull --json
    """
    from fsq.exchange.peers import pull as pull_one, pull_all
    settings = load(db=db)
    conn = open_db(settings, create=False)
    limits = pull_limits(settings)
    if url:
        from fsq.errors import ExternalError
        try:
            done, failed = [pull_one(conn, url, limits=limits, restart=restart)], []
        except ExternalError as e:
            done, failed = [], [{"url": url, "error": e.message}]
    else:
        done, failed = pull_all(conn, limits, restart=restart)
    if as_json:
        echo_json({"pulled": done, "failed": failed})
    else:
        for r in done:
            click.echo(f"{r['url']}: accepted {r['accepted']}, already known {r['duplicate']}, "
                       f"rejected {r['rejected']}, cursor {r['cursor']}")
        for f in failed:
            click.echo(f"fsq: error: {f['error']}", err=True)
    if failed:
        raise Exit(3)
    if any(r["rejected"] for r in done):
        raise Exit(4)


@peers.command("rejections")
@click.argument("url", required=False)
@click.option("--limit", type=int, default=50, show_default=True)
@db_option
@json_option
def rejections_cmd(url, limit, db, as_json):
    """What was refused from peers, newest first, with the reason.

    \b
    Example:
      fsq peers rejections https://lemmy.friend.example
    """
    from fsq.exchange.peers import rejections
    rows = rejections(open_db(load(db=db), create=False), url, limit)
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo("nothing refused")
    else:
        click.echo(table(rows, ["at", "url", "cursor", "reason"]))


COMMANDS = [peers]
