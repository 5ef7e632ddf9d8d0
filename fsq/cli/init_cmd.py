"""`fsq init` and `fsq key ...`: state database, the vault key pair and the custodian key."""

from __future__ import annotations

import click

from fsq.cli.common import (custodian_paths, db_option, echo_json, json_option, load, open_db,
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
@click.option("--attest-key", "with_attest_key", is_flag=True,
              help="Also create the attestation signing key for sharing verdicts with peers "
                   "[FSQ_ATTEST_KEY, ./keys/attest.key] (or later: `fsq attest keygen`).")
@click.option("--attest-passphrase-file", type=click.Path(dir_okay=False),
              help="File with the signing key's own passphrase (else FSQ_ATTEST_PASSPHRASE "
                   "or a prompt).")
@db_option
@json_option
def init(vault_public_key, vault_private_key, passphrase_file, with_attest_key,
         attest_passphrase_file, db, as_json):
    """Create the state database, a vault key pair and the custodian signing key.

    The public key is all `fsq scan` needs. The private key is encrypted with your passphrase
    (Argon2id) and is needed only to read evidence (release, review, deep verify). Keep it
    off the scanning host if you can, and keep a backup: without it the evidence is lost.
    The custodian key (custodian.key / custodian.pub beside them, same passphrase) signs
    clearances, hold lifts and destruction requests; purge verifies those signatures.

    \b
    Examples:
      fsq init                                  # prompts for a passphrase
      fsq init --passphrase-file /root/fsq.pass
      fsq init --attest-key --attest-passphrase-file /root/fsq-attest.pass
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
        raise UsageError(f"only one half of the vault key pair exists "
                         f"({pub if pub.exists() else priv}); restore the other half from "
                         "your backup, or move the lone file away")
    else:
        pw = check_new_passphrase(get_passphrase(
            env=settings.vault_passphrase, file=passphrase_file, prompt=True, confirm=True,
            what="new vault passphrase"))
        fp = generate_keypair(pub, priv, pw)
        created = True
        audit.append(conn, "key.created", "vault-key",
                     {"fingerprint": fp, "public_key": str(pub), "private_key": str(priv)})
        _make_custodian(conn, settings, pw)
    cpub, cpriv = custodian_paths(settings)
    custodian_fp = None
    if cpub.exists():
        from fsq.custody.custodian import load_verifier
        custodian_fp = load_verifier(cpub).fingerprint
    result = {"db": settings.db, "public_key": str(pub), "private_key": str(priv),
              "fingerprint": fp, "created": created, "custodian_public_key": str(cpub),
              "custodian_fingerprint": custodian_fp}
    if with_attest_key:
        from fsq.cli.attest_cmd import make_signing_key
        kid, made = make_signing_key(settings, attest_passphrase_file, conn)
        result["attest_keyid"], result["attest_key_created"] = kid, made
    if as_json:
        echo_json(result)
    else:
        click.echo(f"state database: {settings.db}")
        click.echo(f"vault key {'created' if created else 'already present'}: {fp}")
        click.echo(f"  public:  {pub}   (the scanner needs only this)")
        click.echo(f"  private: {priv}   (encrypted; back it up, keep it off the scan host)")
        if custodian_fp:
            click.echo(f"custodian key: {custodian_fp}  ({cpub}; signs clearances and lifts)")
        else:
            click.echo("custodian key missing: run `fsq key custodian-init` (clear, hold lift "
                       "and purge need it)")
        if with_attest_key:
            click.echo(f"attestation signing key "
                       f"{'created' if result['attest_key_created'] else 'already present'}: "
                       f"key id {result['attest_keyid']}")


def _make_custodian(conn, settings, pw) -> str:
    from fsq.custody.custodian import generate
    cpub, cpriv = custodian_paths(settings)
    fp = generate(cpub, cpriv, pw)
    audit.append(conn, "custodian.created", "custodian-key",
                 {"fingerprint": fp, "public_key": str(cpub), "private_key": str(cpriv)})
    return fp


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
    cpriv = custodian_paths(settings)[1]
    if cpriv.exists():  # one passphrase for both keys
        from fsq.custody.custodian import change_passphrase as change_custodian
        change_custodian(cpriv, old, new)
    audit.append(open_db(settings, create=False), "key.passphrase_changed", "vault-key",
                 {"private_key": str(priv)})
    click.echo(f"passphrase of {priv} changed" + (f" (and of {cpriv})" if cpriv.exists()
                                                  else ""))


@key.command("custodian-init")
@click.option("--vault-private-key", type=click.Path(dir_okay=False),
              help="Private key file [FSQ_VAULT_PRIVATE_KEY, ./keys/vault.key].")
@passphrase_file_option
@db_option
@json_option
def custodian_init(vault_private_key, passphrase_file, db, as_json):
    """Create the custodian signing key for an install made before it existed.

    The key is encrypted under the vault passphrase (checked against the vault private key
    first) and written beside the vault keys. Then run `fsq custody re-sign` once so the
    open clearances and hold lifts are signed; purge refuses unsigned ones.

    \b
    Example:
      fsq key custodian-init --passphrase-file /root/fsq.pass
    """
    from fsq.quarantine.keys import load_private_key
    from fsq.secrets import get_passphrase
    settings = load(vault_private_key=vault_private_key, db=db)
    conn = open_db(settings, create=False)
    pw = get_passphrase(env=settings.vault_passphrase, file=passphrase_file, prompt=True)
    load_private_key(private_key_path(settings), pw)  # same passphrase as the vault key
    fp = _make_custodian(conn, settings, pw)
    cpub, cpriv = custodian_paths(settings)
    if as_json:
        echo_json({"fingerprint": fp, "public_key": str(cpub), "private_key": str(cpriv)})
        return
    click.echo(f"custodian key created: {fp}\n  public:  {cpub}\n  private: {cpriv}")
    click.echo("next: `fsq custody re-sign` to sign clearances and lifts made before")


@key.command("show")
@click.option("--vault-public-key", type=click.Path(dir_okay=False),
              help="Public key file [FSQ_VAULT_PUBLIC_KEY, ./keys/vault.pub].")
@json_option
def show(vault_public_key, as_json):
    """Print the vault (and custodian) public key fingerprints (compare them across hosts).

    \b
    Example:
      fsq key show
    """
    from fsq.quarantine.keys import fingerprint, load_public_key
    settings = load(vault_public_key=vault_public_key)
    pub = public_key_path(settings)
    fp = fingerprint(load_public_key(pub))
    cpub = custodian_paths(settings)[0]
    cfp = None
    if cpub.exists():
        from fsq.custody.custodian import load_verifier
        cfp = load_verifier(cpub).fingerprint
    if as_json:
        echo_json({"public_key": str(pub), "fingerprint": fp,
                   "custodian_public_key": str(cpub) if cfp else None,
                   "custodian_fingerprint": cfp})
    else:
        click.echo(f"{fp}  {pub}")
        if cfp:
            click.echo(f"{cfp}  {cpub}  (custodian)")


COMMANDS = [init, key]
