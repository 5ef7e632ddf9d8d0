"""`fsq demo`: the whole flow, offline, on synthetic data, with the real commands.

Builds a small pict-rs-shaped store of generated images (plus a few broken files), a tiny
random-weight open_clip model written to a local checkpoint, and a known-hash list naming two
of the images (a random model recognises nothing, so the hash list is what flags here). Then it
runs the same commands an admin runs, printing each one: init, scan --dry-run, flagged, apply,
incidents, vault verify, release, audit verify. State goes to the usual defaults (./fsq.db,
./quarantine, ./keys); the store and model go to ./fsq-demo.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from pathlib import Path

import click

from fsq.errors import UsageError


def _run(args: list[str]) -> None:
    from fsq.cli.main import cli
    click.secho("\n$ fsq " + " ".join(shlex.quote(a) for a in args), bold=True)
    try:
        cli.main(args, prog_name="fsq", standalone_mode=False)
    except SystemExit as e:  # ctx.exit() inside commands
        if e.code not in (0, None):
            raise UsageError(f"demo step `fsq {' '.join(args)}` exited {e.code}") from None


def _write_bad_inputs(store: Path) -> None:
    bad = store / "00" / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("this is text, not a PNG\n")
    (bad / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)


@click.command("demo")
@click.option("--dir", "base", default="fsq-demo", show_default=True,
              type=click.Path(file_okay=False), help="Where to build the synthetic store.")
@click.option("--images", default=24, show_default=True, type=int,
              help="Number of synthetic images.")
@click.option("--fresh", is_flag=True, help="Delete a previous demo (its dir, ./fsq.db, "
                                            "./quarantine contents, ./keys) first.")
def demo(base, images, fresh):
    """Run the whole flow offline on synthetic data (no real content, no downloads).

    \b
    Example:
      fsq demo --fresh
    """
    from fsq.classify.tiny import write_tiny_model
    from fsq.synth import make_store

    base_p = Path(base)
    marker = base_p / "demo-passphrase.txt"
    keys_dir = Path("keys")
    if (keys_dir / "vault.key").exists() and not marker.exists():
        raise UsageError("./keys/vault.key exists and is not a demo key: run the demo in an "
                         "empty directory so it cannot touch real fsq state")
    if fresh and marker.exists():
        shutil.rmtree(base_p, ignore_errors=True)
        shutil.rmtree(keys_dir, ignore_errors=True)
        for p in ("fsq.db", "fsq.db-wal", "fsq.db-shm"):
            Path(p).unlink(missing_ok=True)
        for p in Path("quarantine").glob("*"):
            if p.name != ".gitkeep":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    store = base_p / "pictrs" / "files"
    if not store.exists():
        click.echo(f"building a synthetic pict-rs store of {images} images in {store} ...")
        keys = make_store(store, images, seed=7, megapixels=(0.05, 0.3))
        _write_bad_inputs(store)
        flagged = keys[:2]
        with open(base_p / "known-bad.txt", "w") as fh:
            fh.write("# demo hash list: two synthetic images stand in for known material\n")
            for k in flagged:
                fh.write(hashlib.sha256((store / k).read_bytes()).hexdigest() + "\n")
        marker.write_text("demo passphrase - never use a demo key for real evidence\n")
        os.chmod(marker, 0o600)
        write_tiny_model(base_p / "model")
    model_dir = base_p / "model"
    cfg = next(model_dir.glob("*.json"))
    ckpt = next(p for p in model_dir.iterdir() if p.suffix in (".pt", ".bin", ".pth"))

    os.environ.update({
        "FSQ_SOURCE": "file://" + str(store.resolve()),
        "FSQ_MODEL": str(cfg), "FSQ_PRETRAINED": str(ckpt),
        "FSQ_HASH_LISTS": str(base_p / "known-bad.txt"),
        "FSQ_BATCH_SIZE": "8",
    })
    click.echo("demo settings: FSQ_SOURCE, FSQ_MODEL, FSQ_PRETRAINED, FSQ_HASH_LISTS set for "
               "this run (see `fsq config show`).\nExpect a calibration warning: the tiny "
               "random model is not the ViT-L-14/openai model the shipped thresholds fit, so "
               "here the known-hash list does the flagging.")
    pw = ["--passphrase-file", str(marker)]
    _run(["init", *pw])
    _run(["scan", "--all", "--dry-run"])
    _run(["flagged"])
    _run(["apply"])
    _run(["incidents"])
    _run(["vault", "verify"])
    _run(["release", "1", "--reason", "demo: pretend this was a false positive", *pw])
    _run(["scan", "--all"])
    _run(["incidents"])
    _run(["report", "--all"])
    _run(["audit", "verify"])
    click.secho("\ndemo finished.", bold=True)
    click.echo("On a real instance (after `fsq init`):\n"
               "  fsq scan --all --dry-run --source file:///srv/lemmy/volumes/pictrs/files\n"
               "  fsq flagged; fsq apply; fsq incidents; fsq report ID\n"
               "See README.md for models, S3/SFTP stores, fsq serve and retention.")


COMMANDS = [demo]
