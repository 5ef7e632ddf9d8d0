"""`fsq apply`, `fsq recover`, `fsq release`, `fsq vault verify`."""

from __future__ import annotations

import click

from fsq.cli.common import (Exit, VaultCache, db_option, echo_json, host_key_option, json_option,
                            load, open_db, passphrase_file_option, private_key, vault_options)
from fsq.errors import IntegrityError
from fsq.incidents import resolve
from fsq.runtime import build_quarantiner
from fsq.sources.base import open_source


@click.command("apply")
@click.option("--source", help="Source URL whose flagged objects to act on [FSQ_SOURCE].")
@click.option("--key", "keys", multiple=True, help="Only this storage key (repeatable).")
@vault_options
@host_key_option
@db_option
@json_option
def apply(source, keys, vault, vault_public_key, accept_new_host_key, db, as_json):
    """Quarantine objects flagged earlier (e.g. by `fsq scan --dry-run`) without classifying
    them again. Each file is re-read and must still have the flagged sha256.

    \b
    Example:
      fsq flagged && fsq apply --source file:///srv/lemmy/volumes/pictrs/files
    """
    settings = load(source=source, vault=vault, vault_public_key=vault_public_key, db=db,
                    sftp_accept_new_host_key=accept_new_host_key)
    conn = open_db(settings, create=False)
    q = build_quarantiner(settings)
    with open_source(settings.source, settings) as src:
        rec = q.recover(conn, {src.url: src})
        res = q.apply_pending(conn, src, keys=set(keys) if keys else None)
    res["recovered"] = rec
    if as_json:
        echo_json(res)
    else:
        click.echo(f"quarantined {res['quarantined']}, failed {res['failed']}, "
                   f"changed since flagged {res['changed']}")
        for p in res["problems"]:
            click.echo(f"  {p['key']}: {p['reason']}")
    if res["failed"]:
        raise Exit(3)


@click.command("recover")
@click.option("--source", help="Source URL [FSQ_SOURCE].")
@vault_options
@host_key_option
@db_option
@json_option
def recover(source, vault, vault_public_key, accept_new_host_key, db, as_json):
    """Finish or roll back quarantine moves a crash left unfinished.

    `fsq scan` and `fsq apply` do this automatically first; run it by hand after a crash
    if you want to check. Afterwards each file is in the source or in the vault, once.

    \b
    Example:
      fsq recover --source file:///srv/lemmy/volumes/pictrs/files
    """
    settings = load(source=source, vault=vault, vault_public_key=vault_public_key, db=db,
                    sftp_accept_new_host_key=accept_new_host_key)
    conn = open_db(settings, create=False)
    q = build_quarantiner(settings)
    with open_source(settings.source, settings) as src:
        counts = q.recover(conn, {src.url: src})
    if as_json:
        echo_json(counts)
    else:
        click.echo(f"completed {counts['completed']}, rolled back {counts['rolled_back']}, "
                   f"pending (other source/vault) {counts['pending']}")


@click.command("release")
@click.argument("incident")
@click.option("--reason", required=True, help="Why this is a false positive (audited).")
@click.option("--force", is_flag=True, help="Overwrite a different file now at the original key.")
@click.option("--dry-run", is_flag=True, help="Decrypt and check, restore nothing.")
@passphrase_file_option
@host_key_option
@db_option
@json_option
def release(incident, reason, force, dry_run, passphrase_file, accept_new_host_key, db, as_json):
    """Restore a false positive: decrypt, check sha256, write each file back to its original
    key, remove the vault copy, and allowlist the content so later scans pass it.

    Needs the vault private key. Every decryption is recorded in the audit log.

    \b
    Example:
      fsq release 12 --reason "comic strip, not abuse material"
    """
    from fsq.quarantine.release import release_incident
    settings = load(db=db, sftp_accept_new_host_key=accept_new_host_key)
    conn = open_db(settings, create=False)
    row = resolve(conn, incident)
    key = private_key(settings, passphrase_file)
    cache = VaultCache(settings)
    try:
        res = release_incident(conn, row, private_key=key, vault_for=cache.vault,
                               source_for=cache.source, reason=reason, force=force,
                               dry_run=dry_run)
    finally:
        cache.close()
    if as_json:
        echo_json(res)
    else:
        verb = "would restore" if dry_run else "restored"
        click.echo(f"incident {res['incident']}: {verb} {len(res['restored'])} file(s)")
        for k in res["restored"]:
            click.echo(f"  {k}")
        for r in res.get("deleted", []):
            click.echo(f"  sealed copy {r} deleted (its object lock has expired)")
        for r in res.get("retained", []):
            click.echo(f"  sealed copy {r['entry']} kept by object lock until {r.get('until')}; "
                       f"rerun `fsq release {res['incident']}` after that date to delete it")


@click.group("vault")
def vault() -> None:
    """Vault checks."""


@vault.command("verify")
@click.option("--deep", is_flag=True, help="Also decrypt every entry and check its sha256 "
                                           "(needs the private key; audited).")
@click.option("--vault", "vault_url", help="Vault URL [FSQ_VAULT].")
@passphrase_file_option
@db_option
@json_option
def verify(deep, vault_url, passphrase_file, db, as_json):
    """Check every vault entry: present, and its ciphertext hash matches the database.

    Exit 4 if any entry is missing or corrupt.

    \b
    Examples:
      fsq vault verify
      fsq vault verify --deep --passphrase-file /root/fsq.pass
    """
    from fsq.quarantine.release import verify_vault
    from fsq.quarantine.store import open_vault
    settings = load(vault=vault_url, db=db)
    conn = open_db(settings, create=False)
    key = private_key(settings, passphrase_file) if deep else None
    store = open_vault(settings.vault, settings)
    res = verify_vault(conn, store, deep=deep, private_key=key)
    if as_json:
        echo_json(res)
    else:
        click.echo(f"{res['vault']}: {res['entries']} entr{'y' if res['entries'] == 1 else 'ies'}"
                   f" checked{' (deep)' if deep else ''}, {len(res['bad'])} bad, "
                   f"{len(res['stray_objects'])} stray object(s)")
        for b in res["bad"]:
            click.echo(f"  BAD entry {b['entry']} (incident {b['incident']}): {b['problem']}")
    if res["bad"]:
        if not as_json:
            raise IntegrityError(f"{len(res['bad'])} vault entr"
                                 f"{'y is' if len(res['bad']) == 1 else 'ies are'} missing or "
                                 "corrupt")
        raise Exit(4)


COMMANDS = [apply, recover, release, vault]
