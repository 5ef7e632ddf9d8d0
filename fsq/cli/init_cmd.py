"""`fsq init` and `fsq key ...`: state database and the vault key pair."""

from __future__ import annotations

import click

from fsq.cli.common import (db_option, echo_json, json_option, load, open_db,
                            passphrase_file_option)
from fsq.errors import UsageError
from fsq.ledger import audit
from fsq.runtime import private_key_path, public_key_path


@click.command("init")
@click.option("--vault-public-key", type=click.Path(dir_okay=False),
              help="Where to write the public key [FSQ_VAULT_PUBLIC_KEY, ./keys/vault.pub].")
@click.option("--vault-private-key", type=click.Path(dir_okay=False),
              help="Where to write the encrypted private key [FSQ_VAULT_PRIVATE_KEY, "
                   "./keys/vault.key].")
@passphrase_file_option
@db_option
@json_option
def init(vault_public_key, vault_private_key, passphrase_file, db, as_json):
    """Create the state database and a vault key pair.

    The public key is all `fsq scan` needs. The private key is encrypted with your passphrase
    (Argon2id) and is needed only to read evidence (release, review, deep verify). Keep it
    off the scanning host if you can, and keep a backup: without it the evidence is lost.

    \b
    Examples:
      fsq init                                  # prompts for a passphrase
      fsq init --passphrase-file /root/fsq.pass
    """
    from fsq.quarantine.keys import fingerprint, generate_keypair, load_public_key
    from fsq.secrets import check_new_passphrase, get_passphrase
    settings = load(vault_public_key=vault_public_key, vault_private_key=vault_private_key, db=db)
    pub, priv = public_key_path(settings), private_key_path(settings)
    conn = open_db(settings)
    created = False
    if pub.exists() and priv.exists():
        fp = fingerprint(load_public_key(pub))
    elif pub.exists() or priv.exists():
        raise UsageError(f"only one half of the vault key pair exists ({pub if pub.exists() else priv}); "
                         "restore the other half from your backup, or move the lone file away")
    else:
        pw = check_new_passphrase(get_passphrase(
            env=settings.vault_passphrase, file=passphrase_file, prompt=True, confirm=True,
            what="new vault passphrase"))
        fp = generate_keypair(pub, priv, pw)
        created = True
        audit.append(conn, "key.created", "vault-key",
                     {"fingerprint": fp, "public_key": str(pub), "private_key": str(priv)})
    result = {"db": settings.db, "public_key": str(pub), "private_key": str(priv),
              "fingerprint": fp, "created": created}
    if as_json:
        echo_json(result)
    else:
        click.echo(f"state database: {settings.db}")
        click.echo(f"vault key {'created' if created else 'already present'}: {fp}")
        click.echo(f"  public:  {pub}   (the scanner needs only this)")
        click.echo(f"  private: {priv}   (encrypted; back it up, keep it off the scan host)")


@click.group("key")
def key() -> None:
    """Vault key management: fingerprint, passphrase change.

    \b
    Examples:
      fsq key show
      fsq key change-passphrase --passphrase-file old.txt --new-passphrase-file new.txt
    """


@key.command("change-passphrase")
@click.option("--vault-private-key", type=click.Path(dir_okay=False),
              help="Private key file [FSQ_VAULT_PRIVATE_KEY, ./keys/vault.key].")
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False),
              help="File with the new passphrase (else prompted twice).")
@passphrase_file_option
@db_option
def change_passphrase(vault_private_key, new_passphrase_file, passphrase_file, db):
    """Re-encrypt the vault private key under a new passphrase.

    \b
    Example:
      fsq key change-passphrase --passphrase-file old.txt --new-passphrase-file new.txt
    """
    from fsq.quarantine.keys import change_passphrase as change
    from fsq.secrets import check_new_passphrase, get_passphrase
    settings = load(vault_private_key=vault_private_key, db=db)
    priv = private_key_path(settings)
    old = get_passphrase(env=settings.vault_passphrase, file=passphrase_file, prompt=True,
                         what="current vault passphrase")
    new = check_new_passphrase(get_passphrase(
        env=None, file=new_passphrase_file, prompt=True, confirm=True,
        what="new vault passphrase", env_name="--new-passphrase-file"))
    change(priv, old, new)
    audit.append(open_db(settings, create=False), "key.passphrase_changed", "vault-key",
                 {"private_key": str(priv)})
    click.echo(f"passphrase of {priv} changed")


@key.command("show")
@click.option("--vault-public-key", type=click.Path(dir_okay=False),
              help="Public key file [FSQ_VAULT_PUBLIC_KEY, ./keys/vault.pub].")
@json_option
def show(vault_public_key, as_json):
    """Print the vault public key's fingerprint (compare it across hosts).

    \b
    Example:
      fsq key show
    """
    from fsq.quarantine.keys import fingerprint, load_public_key
    settings = load(vault_public_key=vault_public_key)
    pub = public_key_path(settings)
    fp = fingerprint(load_public_key(pub))
    if as_json:
        echo_json({"public_key": str(pub), "fingerprint": fp})
    else:
        click.echo(f"{fp}  {pub}")


COMMANDS = [init, key]
