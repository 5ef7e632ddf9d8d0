"""`fsq model check`: compare ONNX Runtime int8 with torch fp32 on the admin's own files and
record whether `--precision int8` may run for this checkpoint (fsq.classify.int8_check)."""

from __future__ import annotations

import hashlib

import click

from fsq.cli.common import (Exit, VaultCache, db_option, echo_json, json_option, load, open_db,
                            passphrase_file_option, private_key, show_key, warn)
from fsq.errors import ConfigError
from fsq.runtime import build_classifier, load_concept_set, scan_config
from fsq.sources.base import ObjectError, open_source


@click.group("model")
def model() -> None:
    """Checks of the classifier on this instance's own files.

    \b
    Example:
      fsq model check --sample 200
    """


@model.command("check")
@click.option("--source", help="Source URL whose objects to compare on [FSQ_SOURCE].")
@click.option("--model", "model_name", help="open_clip architecture or model-config JSON "
                                            "[FSQ_MODEL].")
@click.option("--pretrained", help="open_clip tag or checkpoint file [FSQ_PRETRAINED].")
@click.option("--concepts", type=click.Path(dir_okay=False),
              help="Concept-set TOML [FSQ_CONCEPTS; default: shipped set].")
@click.option("--severity", type=click.Choice(["strict", "balanced", "lenient"]),
              help="Threshold shift [FSQ_SEVERITY, balanced].")
@click.option("--sample", type=click.IntRange(1), default=200, show_default=True,
              help="Clean objects to compare (every flagged object still in the store is "
                   "compared too).")
@click.option("--max-delta", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Largest similarity difference allowed [0.005].")
@click.option("--include-vault", is_flag=True,
              help="Also compare every flagged file sealed in the vault (decrypted in memory "
                   "only; needs the private key and passphrase; audited).")
@click.option("--vault-private-key", type=click.Path(dir_okay=False),
              help="With --include-vault: private key file [FSQ_VAULT_PRIVATE_KEY, "
                   "./keys/vault.key].")
@passphrase_file_option
@db_option
@json_option
def check(source, model_name, pretrained, concepts, severity, sample, max_delta, include_vault,
          vault_private_key, passphrase_file, db, as_json):
    """Compare int8 (ONNX Runtime, dynamic, per-channel) with fp32 (torch) on your own files:
    a sample of clean objects plus every flagged object still in the store. int8 is approved
    for this checkpoint only with zero verdict flips and every similarity difference under
    the bound; the result is recorded and audited, and `--precision int8` then runs. `auto`
    never picks int8. Exit 1 when int8 is refused.

    \b
    Examples:
      fsq model check --sample 500
      fsq scan --all --precision int8      # after a passing check
    """
    from fsq.classify import int8_check
    from fsq.classify.onnx_backend import BackendUnavailable, import_ort
    from fsq.media import DecodePool  # hostile files: decoded in killable worker processes
    settings = load(source=source, model=model_name, pretrained=pretrained, concepts=concepts,
                    severity=severity, db=db, vault_private_key=vault_private_key)
    conn = open_db(settings, create=False)
    cs = load_concept_set(settings)
    cfg = scan_config(settings, dry_run=True, rescan=False, mode="all", concepts=cs)
    try:
        ort_version = import_ort().__version__
    except BackendUnavailable as e:
        raise ConfigError(str(e)) from None
    # The reference: torch fp32, whatever the machine would choose for scanning.
    fp32 = load(source=source, model=model_name, pretrained=pretrained, concepts=concepts,
                severity=severity, db=db, precision="fp32", backend="torch", device="cpu")
    clf = build_classifier(fp32, cs)
    try:
        tower = clf.int8_tower()
    except BackendUnavailable as e:
        raise ConfigError(f"int8: {e}") from None
    items: list = []
    seen: list = []
    decoder = DecodePool(settings.decode_workers, settings.decode_seconds)
    try:
        skipped, vault_files = _collect(conn, settings, clf, cfg, decoder, sample, items,
                                        seen, include_vault, passphrase_file)
    finally:
        decoder.close()
    res = int8_check.compare(clf, tower, items,
                             max_delta=max_delta or int8_check.DEFAULT_MAX_DELTA)
    int8_check.record(conn, res, f"onnxruntime {ort_version}",
                      {"clean_requested": sample, "compared": res.files, "skipped": skipped,
                       "vault_files": vault_files if include_vault else "not read"})
    out = {**res.to_json(), "skipped": skipped}
    if as_json:
        echo_json(out)
    else:
        verdict = "APPROVED" if res.passed else "REFUSED"
        click.echo(f"int8 {verdict} for {res.model_id}: {res.reason}")
        click.echo(f"  {res.files} file(s), {res.frames} frame(s) compared ({skipped} skipped); "
                   f"similarity difference max {res.max_delta:.5f}, mean {res.mean_delta:.5f} "
                   f"(bound {res.max_delta_bound}); flagged fp32 {res.flagged_fp32}, "
                   f"int8 {res.flagged_int8}")
        for f in res.flips[:50]:
            click.echo(f"  flip {show_key(f['key'])}: fp32 {f['fp32']}, int8 {f['int8']}")
    if not res.passed:
        if not as_json:
            warn("`--precision int8` stays refused for this checkpoint")
        raise Exit(1)


def _collect(conn, settings, clf, cfg, decoder, sample, items, seen, include_vault,
             passphrase_file) -> tuple[int, int]:
    """Fill ``items`` with the files to compare; (skipped, files from the vault)."""
    import torch

    from fsq.pipeline import decode_or_verdict
    skipped = 0
    with open_source(settings.source, settings) as src:
        rows = conn.execute(
            "SELECT key, sha256, status FROM objects WHERE source=? AND sha256 IS NOT NULL "
            "AND status IN ('clean', 'flagged') ORDER BY status='clean', id", (src.url,))
        clean = 0
        for r in rows.fetchall():
            if r["status"] == "clean":
                if clean >= sample:
                    continue
                clean += 1
            try:
                data = src.read(r["key"])
            except ObjectError:
                skipped += 1
                continue
            if hashlib.sha256(data).hexdigest() != r["sha256"]:
                skipped += 1  # changed since it was decided: not the file the verdict is for
                continue
            decoded, _ = decode_or_verdict(data, cfg, decoder)
            if decoded is None:
                skipped += 1
                continue
            items.append((r["key"], torch.stack([clf.preprocess(f) for f in decoded.frames])))
            seen.append((r["key"], r["sha256"]))
    vault_files = 0
    if include_vault:
        vault_files, bad = _vault_items(conn, settings, passphrase_file, clf, cfg, items,
                                        {sha for _, sha in seen}, decoder)
        skipped += bad
    return skipped, vault_files


def _vault_items(conn, settings, passphrase_file, clf, cfg, items, seen, decoder
                 ) -> tuple[int, int]:
    """Append every sealed flagged file (one per sha256) to ``items``; (added, unreadable).
    Plaintext stays in memory; the decryption is audited before it happens."""
    import torch

    from fsq.ledger import audit
    from fsq.pipeline import decode_or_verdict
    from fsq.quarantine.release import decrypt_entry
    rows = conn.execute("SELECT * FROM vault_entries WHERE state IN "
                        "('done','verified','source_removed') ORDER BY id").fetchall()
    rows = [r for r in rows if r["sha256"] not in seen]
    if not rows:
        return 0, 0
    key = private_key(settings, passphrase_file)
    audit.append(conn, "evidence.decrypted", "vault",
                 {"entries": len(rows), "purpose": "model check (int8 against fp32)"})
    cache = VaultCache(settings)
    added = bad = 0
    done: set[str] = set()
    try:
        for e in rows:
            if e["sha256"] in done:
                continue
            try:
                _, content = decrypt_entry(cache.vault(e["vault"]), e, key)
            except Exception as exc:  # a missing or damaged entry: not compared, counted
                warn(f"vault entry {e['id']}: not compared ({exc})")
                bad += 1
                continue
            decoded, _ = decode_or_verdict(content, cfg, decoder)
            del content
            if decoded is None:
                bad += 1
                continue
            done.add(e["sha256"])
            items.append((e["key"], torch.stack([clf.preprocess(f) for f in decoded.frames])))
            added += 1
    finally:
        cache.close()
    return added, bad


COMMANDS = [model]
