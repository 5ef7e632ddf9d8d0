"""`fsq rescore`: re-decide clean verdicts from stored embeddings (fsq.rescore)."""

from __future__ import annotations

import click

from fsq.cli.common import (Exit, db_option, echo_json, host_key_option, json_option, load,
                            open_db, show_key, vault_options, warn)
from fsq.runtime import build_quarantiner, load_concept_set
from fsq.sources.base import open_source


@click.command("rescore")
@click.option("--source", help="Source URL whose objects to re-decide [FSQ_SOURCE].")
@click.option("--model", help="open_clip architecture or model-config JSON [FSQ_MODEL]; "
                              "must be the model the embeddings were stored with.")
@click.option("--pretrained", help="open_clip tag or checkpoint file [FSQ_PRETRAINED].")
@click.option("--concepts", type=click.Path(dir_okay=False),
              help="Concept-set TOML [FSQ_CONCEPTS; default: shipped set].")
@click.option("--severity", type=click.Choice(["strict", "balanced", "lenient"]),
              help="Threshold shift [FSQ_SEVERITY, balanced].")
@click.option("--dry-run", is_flag=True, help="Record the new verdicts; quarantine nothing "
                                              "(`fsq apply` does it later).")
@vault_options
@host_key_option
@db_option
@json_option
def rescore(source, model, pretrained, concepts, severity, dry_run, vault, vault_public_key,
            accept_new_host_key, db, as_json):
    """Re-decide clean model verdicts under another concept set or severity from the image
    embeddings the scan stored: no file is read or decoded, only the concepts' text
    embeddings are computed (cached). Objects that flag now get a new verdict (method
    `rescore`; the old one is kept) and, without --dry-run, are quarantined like `fsq apply`.

    Only clean verdicts are re-decided: flagged content's embeddings are never kept (they are
    derived from evidence), and clearing a flag is `fsq release`, a person's decision.

    \b
    Examples:
      fsq rescore --severity strict --dry-run
      fsq rescore --concepts ./stricter.toml --source file:///srv/lemmy/volumes/pictrs/files
    """
    from fsq.classify.clip import ClipClassifier
    from fsq.classify.rule import RULE_VERSION
    from fsq.ledger import embeddings
    from fsq.ledger.stale import settings_digest
    from fsq.rescore import rescore as do_rescore
    settings = load(source=source, model=model, pretrained=pretrained, concepts=concepts,
                    severity=severity, vault=vault, vault_public_key=vault_public_key, db=db,
                    sftp_accept_new_host_key=accept_new_host_key)
    conn = open_db(settings, create=False)
    cs = load_concept_set(settings)
    q = None if dry_run else build_quarantiner(settings)
    # Text tower only: the image tower is released before anything else happens.
    text = ClipClassifier(model=settings.model, pretrained=settings.pretrained, concepts=cs,
                          severity=settings.severity, precision="fp32", device="cpu",
                          cache_dir=settings.cache_dir, text_only=True)
    for w in text.warnings:
        warn(w)
    digest = settings_digest(model=settings.model, pretrained=settings.pretrained,
                             concepts_digest=cs.digest, severity=settings.severity,
                             rule_version=RULE_VERSION)
    with open_source(settings.source, settings) as src:
        if not embeddings.count(conn, text.model_id):
            warn(f"no stored embeddings for {text.model_id}: nothing to re-decide (a scan "
                 "with this model stores them)")
        res = do_rescore(conn, src.url, model_id=text.model_id, cs=cs,
                         severity=settings.severity, text_embeddings=text.text_embeddings,
                         settings_digest=digest, dry_run=dry_run)
        out = res.to_json()
        if q is not None and res.flagged_keys:
            applied = q.apply_pending(conn, src, keys=set(res.flagged_keys))
            out["quarantined"] = applied["quarantined"]
            out["quarantine_failed"] = applied["failed"]
            out["problems"] = res.problems + [
                {"key": p["key"], "status": "quarantine-failed", "reason": p["reason"]}
                for p in applied["problems"]]
        else:
            out["quarantined"], out["quarantine_failed"] = 0, 0
    if as_json:
        echo_json(out)
    else:
        click.echo(f"rescored {res.candidates} object(s) ({res.frames} frames) in "
                   f"{res.seconds:.2f}s under {cs.name} / {settings.severity}: "
                   f"newly flagged {res.flagged}, unchanged {res.unchanged}, "
                   f"errors {res.errors}"
                   + (" (dry run)" if dry_run else f", quarantined {out['quarantined']}"))
        for k in res.flagged_keys[:50]:
            click.echo(f"  flagged      {show_key(k)}")
        for p in out["problems"][:50]:
            click.echo(f"  {p['status']:<12} {show_key(p['key'])}: {p['reason']}")
        if res.unchanged:
            click.echo(f"{res.unchanged} unchanged object(s) keep their earlier verdict; "
                       "`fsq scan` still counts them as decided under other settings")
    if out["quarantine_failed"]:
        raise Exit(3)


COMMANDS = [rescore]
