"""`fsq apply`, `fsq recover`, `fsq release`, `fsq vault verify|relocate`."""

from __future__ import annotations

import click

from fsq.cli.common import (Exit, VaultCache, db_option, echo_json, host_key_option, json_option,
                            load, open_db, passphrase_file_option, private_key, show_key,
                            vault_options, warn)
from fsq.custody.incidents import resolve
from fsq.errors import ExternalError, IntegrityError
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
            click.echo(f"  {show_key(p['key'])}: {p['reason']}")
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
@click.argument("incidents", metavar="ID...", nargs=-1, required=True)
@click.option("--reason", required=True, help="Why this is a false positive (audited).")
@click.option("--force", is_flag=True, help="Overwrite a different file now at the original key.")
@click.option("--dry-run", is_flag=True, help="Decrypt and check, restore nothing.")
@click.option("--vault-private-key", type=click.Path(dir_okay=False),
              help="Private key file [FSQ_VAULT_PRIVATE_KEY, ./keys/vault.key].")
@passphrase_file_option
@host_key_option
@db_option
@json_option
def release(incidents, reason, force, dry_run, vault_private_key, passphrase_file,
            accept_new_host_key, db, as_json):
    """Restore a false positive: decrypt, check sha256, write each file back to its original
    key, remove the vault copy, and allowlist the content so later scans pass it.

    Needs the vault private key. Every decryption is recorded in the audit log. Several IDs
    are released one after the other with the same --reason (the key is unlocked once); the
    first failure stops the command, those before it stay released. --json prints one object
    per ID (a list when several are given).

    \b
    Examples:
      fsq release 12 --reason "comic strip, not abuse material"
      fsq release 12 15 --reason "logos" --vault-private-key /secure/vault.key
    """
    from fsq.quarantine.release import release_incident
    settings = load(db=db, sftp_accept_new_host_key=accept_new_host_key,
                    vault_private_key=vault_private_key)
    conn = open_db(settings, create=False)
    rows = [resolve(conn, ref) for ref in dict.fromkeys(incidents)]  # all exist, or none
    key = private_key(settings, passphrase_file)
    cache = VaultCache(settings)
    out = []
    try:
        for row in rows:
            res = release_incident(conn, row, private_key=key, vault_for=cache.vault,
                                   source_for=cache.source, reason=reason, force=force,
                                   dry_run=dry_run)
            out.append(res)
            if not as_json:
                _print_release(res, dry_run)
    finally:
        cache.close()
    if as_json:
        echo_json(out[0] if len(out) == 1 else out)


def _print_release(res, dry_run: bool) -> None:
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
    """Vault checks and upkeep: verify every entry, relocate after a move.

    \b
    Examples:
      fsq vault verify
      fsq vault relocate file:///old/wd/quarantine file://./quarantine
    """


@vault.command("verify")
@click.option("--deep", is_flag=True, help="Also decrypt every entry and check its sha256 "
                                           "(needs the private key; audited).")
@click.option("--vault", "vault_url", help="Check only this vault URL [default: every vault the "
                                           "database references, and FSQ_VAULT].")
@click.option("--vault-private-key", type=click.Path(dir_okay=False),
              help="With --deep: private key file [FSQ_VAULT_PRIVATE_KEY, ./keys/vault.key].")
@passphrase_file_option
@db_option
@json_option
def verify(deep, vault_url, vault_private_key, passphrase_file, db, as_json):
    """Check every vault entry: present, and its ciphertext hash matches the database.

    Every vault the database references is checked, not only FSQ_VAULT: a vault that cannot
    be reached while the database lists evidence in it is a failure (exit 4 when a vault
    directory is gone, e.g. after copying the working directory; exit 3 when a storage
    service fails). Exit 4 if any entry is missing or corrupt.

    \b
    Examples:
      fsq vault verify
      fsq vault verify --deep --passphrase-file /root/fsq.pass
    """
    from fsq.quarantine.release import verify_vault
    from fsq.quarantine.vaults import probe, referenced
    settings = load(vault=vault_url, db=db, vault_private_key=vault_private_key)
    conn = open_db(settings, create=False)
    key = private_key(settings, passphrase_file) if deep else None
    refs = referenced(conn)
    cache = VaultCache(settings)
    configured = cache.vault(settings.vault).url  # FSQ_VAULT as an absolute URL (created)
    urls = [configured] if vault_url else [configured] + [u for u in refs if u != configured]
    checked, unreachable = [], []
    try:
        for url in urls:
            pr = probe(url, cache.vault)
            if pr.store is None:
                unreachable.append({"vault": url, "entries": refs.get(url, 0),
                                    "problem": pr.problem, "missing": pr.missing})
            else:
                checked.append(verify_vault(conn, pr.store, deep=deep, private_key=key))
    finally:
        cache.close()
    unreachable = [u for u in unreachable if u["entries"]]
    bad = [{**b, "vault": c["vault"]} for c in checked for b in c["bad"]]
    res = {"vault": configured, "entries": sum(c["entries"] for c in checked), "bad": bad,
           "deep": deep, "stray_objects": [n for c in checked for n in c["stray_objects"]],
           "retained_after_release": [n for c in checked
                                      for n in c["retained_after_release"]],
           "vaults": checked, "unreachable": unreachable, "ok": not bad and not unreachable}
    if as_json:
        echo_json(res)
    else:
        for c in checked:
            click.echo(f"{c['vault']}: {c['entries']} entr{'y' if c['entries'] == 1 else 'ies'}"
                       f" checked{' (deep)' if deep else ''}, {len(c['bad'])} bad, "
                       f"{len(c['stray_objects'])} stray object(s)")
            for b in c["bad"]:
                click.echo(f"  BAD entry {b['entry']} (incident {b['incident']}): "
                           f"{b['problem']}")
        others = [c["vault"] for c in checked if c["vault"] != configured and c["entries"]]
        if others:
            warn(f"the database records evidence in {', '.join(others)}, not in FSQ_VAULT "
                 f"({configured}); if this working directory is a copy, the two share that "
                 "vault (a purge here destroys it there): see `fsq vault relocate`")
        for u in unreachable:
            click.echo(f"{u['vault']}: UNREACHABLE ({u['problem']}); the database lists "
                       f"{u['entries']} entr{'y' if u['entries'] == 1 else 'ies'} there, "
                       "not checked")
    if res["ok"]:
        return
    code = 4 if bad or any(u["missing"] for u in unreachable) else 3
    if as_json:
        raise Exit(code)
    parts = []
    if bad:
        parts.append(f"{len(bad)} vault entr{'y is' if len(bad) == 1 else 'ies are'} missing "
                     "or corrupt")
    if unreachable:
        n = sum(u["entries"] for u in unreachable)
        parts.append(f"{len(unreachable)} vault(s) the database references cannot be reached "
                     f"({n} entries unchecked); if the working directory or vault was moved "
                     "or copied, run `fsq vault relocate OLD NEW` (docs/operations.md)")
    msg = "; ".join(parts)
    raise IntegrityError(msg) if code == 4 else ExternalError(msg)


@vault.command("relocate")
@click.argument("old")
@click.argument("new")
@click.option("--dry-run", is_flag=True, help="Check NEW holds every entry; change nothing.")
@db_option
@json_option
def relocate(old, new, dry_run, db, as_json):
    """Record that the vault recorded as OLD now lives at NEW (audited).

    Use after moving or copying the working directory or the vault. Every live entry recorded
    under OLD must be present in NEW with its recorded hashes, else nothing changes (exit 4).
    OLD is the URL exactly as `fsq vault verify` prints it.

    \b
    Example:
      fsq vault relocate file:///old/wd/quarantine file:///srv/fsq/quarantine
    """
    from fsq.quarantine.vaults import probe, relocate as do_relocate
    settings = load(db=db)
    conn = open_db(settings, create=False)
    cache = VaultCache(settings)
    try:
        pr = probe(new, cache.vault)
        if pr.store is None:
            raise (IntegrityError if pr.missing else ExternalError)(
                f"NEW vault {new} cannot be reached: {pr.problem}")
        res = do_relocate(conn, old, pr.store, dry_run=dry_run)
    finally:
        cache.close()
    if as_json:
        echo_json(res)
    elif dry_run:
        click.echo(f"{res['entries']} entries recorded under {res['old']} are all present in "
                   f"{res['new']}; run again without --dry-run to record the move")
    else:
        click.echo(f"{res['rows_updated']} vault entries now recorded under {res['new']} "
                   f"(was {res['old']}); {res['entries']} live entries checked first")


COMMANDS = [apply, recover, release, vault]
