"""`fsq attest ...`: this instance's signed verdicts (keygen, publish, revoke, serve, export,
import). See docs/federation.md."""

from __future__ import annotations

import os

import click

from fsq.cli.common import Exit, db_option, echo_json, json_option, load, open_db, table
from fsq.errors import ConfigError, UsageError
from fsq.ledger import audit
from fsq.runtime import pull_limits, signing_key_path


def attest_passphrase_option(f):
    return click.option("--passphrase-file", type=click.Path(dir_okay=False),
                        help="File holding the signing key's passphrase (else "
                             "FSQ_ATTEST_PASSPHRASE or a prompt; giving both is an error).")(f)


def key_option(f):
    return click.option("--key", "key_path", type=click.Path(dir_okay=False),
                        help="Signing key file [FSQ_ATTEST_KEY, ./keys/attest.key].")(f)


def signing_passphrase(settings, passphrase_file, *, confirm=False):
    from fsq.secrets import get_passphrase
    return get_passphrase(env=settings.attest_passphrase, file=passphrase_file, prompt=True,
                          confirm=confirm, what="signing key passphrase",
                          env_name="FSQ_ATTEST_PASSPHRASE")


def make_signing_key(settings, passphrase_file, conn) -> tuple[str, bool]:
    """Create the signing key unless it exists: (key id, created). Shared with `fsq init`."""
    from fsq.exchange import dsse, signing_key
    path = signing_key_path(settings)
    if path.exists():
        return dsse.keyid(signing_key.load_public(path)), False
    kid = signing_key.generate(path, signing_passphrase(settings, passphrase_file,
                                                        confirm=True))
    audit.append(conn, "key.created", "attest-key", {"keyid": kid, "path": str(path)})
    return kid, True


def _publisher(settings, passphrase_file):
    from fsq.exchange import signing_key
    from fsq.exchange.publish import Publisher
    if not settings.instance_url:
        raise ConfigError("statements name this instance: set FSQ_INSTANCE_URL (e.g. "
                          "https://lemmy.example) first")
    key = signing_key.load_private(signing_key_path(settings),
                                   signing_passphrase(settings, passphrase_file))
    return Publisher(key=key, instance=settings.instance_url.rstrip("/"),
                     include_model=settings.attest_publish_model)


@click.group("attest")
def attest() -> None:
    """This instance's signed verdicts, for peers who trust it (docs/federation.md).

    \b
    Example:
      fsq attest keygen                 # once: the signing key (asks for its passphrase)
      fsq attest publish                # sign the human decisions made since last time
      fsq attest serve --listen 127.0.0.1:14052
    """


@attest.command("keygen")
@key_option
@attest_passphrase_option
@db_option
@json_option
def keygen(key_path, passphrase_file, db, as_json):
    """Create the instance's attestation signing key (Ed25519, passphrase-protected, separate
    from the vault key). Give the printed key id to the admins of peer instances.

    \b
    Example:
      fsq attest keygen --passphrase-file /root/fsq-attest.pass
    """
    settings = load(attest_key=key_path, db=db)
    if signing_key_path(settings).exists():
        raise UsageError(f"{signing_key_path(settings)} already exists; fsq never overwrites a "
                         "signing key (peers pinned it). Move it away first.")
    kid, _ = make_signing_key(settings, passphrase_file, open_db(settings))
    if as_json:
        echo_json({"keyid": kid, "key": str(signing_key_path(settings))})
    else:
        click.echo(f"signing key created: {signing_key_path(settings)}")
        click.echo(f"key id: {kid}")


@attest.command("key")
@key_option
@json_option
def show_key(key_path, as_json):
    """Print the signing key's id (peers pin it with `fsq peers add URL --key KEYID`).

    \b
    Example:
      fsq attest key
    """
    from fsq.exchange import dsse, signing_key
    settings = load(attest_key=key_path)
    kid = dsse.keyid(signing_key.load_public(signing_key_path(settings)))
    if as_json:
        echo_json({"keyid": kid, "key": str(signing_key_path(settings))})
    else:
        click.echo(kid)


@attest.command("publish")
@click.option("--dry-run", is_flag=True, help="Show what would be signed; sign nothing.")
@key_option
@attest_passphrase_option
@db_option
@json_option
def publish_cmd(dry_run, key_path, passphrase_file, db, as_json):
    """Sign statements for local decisions not yet published: a release (false positive) is
    `safe`, an incident marked reported is `unsafe`; a changed decision supersedes the old
    statement. Model verdicts only with FSQ_ATTEST_PUBLISH_MODEL=true.

    \b
    Example:
      FSQ_INSTANCE_URL=https://lemmy.example fsq attest publish --passphrase-file p.txt
    """
    from fsq.exchange.publish import publish_or_rehearse
    settings = load(attest_key=key_path, db=db)
    conn = open_db(settings, create=False)
    res = publish_or_rehearse(conn, _publisher(settings, passphrase_file), dry_run=dry_run)
    if as_json:
        echo_json(res)
        return
    verb = "would sign" if dry_run else "signed"
    click.echo(f"{verb} {len(res['published'])} statement(s)")
    for p in res["published"]:
        click.echo(f"  {p['verdict']:<7} {p['method']:<6} {p['sha256'][:16]}  "
                   f"{p['statement'][:16]}"
                   + (f"  supersedes {p['supersedes'][:16]}" if p["supersedes"] else ""))


@attest.command("revoke")
@click.argument("target")
@key_option
@attest_passphrase_option
@db_option
@json_option
def revoke_cmd(target, key_path, passphrase_file, db, as_json):
    """Withdraw a published statement: signs an `unknown` statement that supersedes it, so
    peers stop applying it. TARGET is a statement id or the content's sha256.

    \b
    Example:
      fsq attest revoke 3f1c...e9 --passphrase-file p.txt
    """
    from fsq.exchange.publish import revoke
    settings = load(attest_key=key_path, db=db)
    conn = open_db(settings, create=False)
    res = revoke(conn, _publisher(settings, passphrase_file), target)
    if as_json:
        echo_json(res)
    else:
        click.echo(f"revoked {res['revoked'][:16]} (content {res['sha256'][:16]}) with "
                   f"statement {res['statement'][:16]}")


@attest.command("list")
@db_option
@json_option
def list_cmd(db, as_json):
    """List the statements this instance signed, oldest first.

    \b
    Example:
      fsq attest list --json
    """
    from fsq.exchange.publish import list_statements
    settings = load(db=db)
    rows = list_statements(open_db(settings, create=False))
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo("no statements yet; `fsq attest publish` signs local decisions")
    else:
        click.echo(table([{**r, "statement": r["statement"][:16], "sha256": r["sha256"][:16],
                           "superseded": "yes" if r["superseded"] else ""} for r in rows],
                         ["seq", "verdict", "method", "sha256", "statement", "time",
                          "superseded"]))


@attest.command("serve")
@click.option("--listen", help="HOST:PORT [FSQ_ATTEST_LISTEN, 127.0.0.1:14052].")
@key_option
@db_option
def serve_cmd(listen, key_path, db):
    """Publish /.well-known/fsq/keys.json and /.well-known/fsq/attestations over HTTP.

    Read-only, no passphrase needed (only the public half of the key is read). Put it behind
    your HTTPS reverse proxy at the instance's URL so peers can pull.

    \b
    Example:
      fsq attest serve --listen 127.0.0.1:14052
      # nginx: location /.well-known/fsq/ { proxy_pass http://127.0.0.1:14052; }
    """
    from fsq.exchange import http, signing_key
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("`fsq attest serve` needs the serve extra: pip install "
                          "'fsq[serve]'") from None
    settings = load(attest_listen=listen, attest_key=key_path, db=db)
    open_db(settings, create=False).close()  # migrated and present before serving
    pub = signing_key.load_public(signing_key_path(settings))
    host, _, port = settings.attest_listen.rpartition(":")
    app = http.create_app(settings.db, pub, settings.instance_url,
                          include_model=settings.attest_publish_model)
    http.serve_forever(app, host.strip("[]"), int(port))


@attest.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@key_option
@db_option
@json_option
def export_cmd(file, force, key_path, db, as_json):
    """Write every published statement (and the public key) to FILE, for a peer that cannot
    reach this instance. The file holds exactly what the HTTP feed serves.

    \b
    Example:
      fsq attest export /tmp/lemmy-example.fsq-attest.jsonl
    """
    from fsq.exchange import signing_key
    from fsq.exchange.publish import export
    settings = load(attest_key=key_path, db=db)
    if os.path.exists(file) and not force:
        raise UsageError(f"{file} exists; pass --force to overwrite it")
    conn = open_db(settings, create=False)
    pub = signing_key.load_public(signing_key_path(settings))
    tmp = f"{file}.tmp"
    n = 0
    with open(tmp, "wb") as fh:
        for line in export(conn, pub, settings.instance_url,
                           include_model=settings.attest_publish_model):
            fh.write(line)
            n += line.startswith(b'{"cursor"')
    os.replace(tmp, file)
    if as_json:
        echo_json({"file": file, "statements": n})
    else:
        click.echo(f"wrote {n} statement(s) to {file}")


@attest.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@db_option
@json_option
def import_cmd(file, db, as_json):
    """Import a peer's `fsq attest export` file. The peer must have been added first (its key
    pinned); each statement is verified exactly as a pull would.

    \b
    Example:
      fsq peers add https://lemmy.example --key KEYID --keys-file their.jsonl
      fsq attest import their.jsonl
    """
    from fsq.exchange.peers import import_lines
    settings = load(db=db)
    conn = open_db(settings, create=False)
    limits = pull_limits(settings)
    if os.path.getsize(file) > limits.max_bytes * 16:
        raise UsageError(f"{file} is larger than 16 x FSQ_PEERS_MAX_RESPONSE_BYTES; refused")
    with open(file, "rb") as fh:
        res = import_lines(conn, (ln for ln in fh if ln.strip()), limits=limits)
    if as_json:
        echo_json(res)
    else:
        click.echo(f"{res['url']}: accepted {res['accepted']}, already known "
                   f"{res['duplicate']}, rejected {res['rejected']} (see `fsq peers "
                   "rejections`)")
    if res["rejected"]:
        raise Exit(4)


COMMANDS = [attest]
