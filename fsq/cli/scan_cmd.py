"""`fsq scan`: one full pass (--all) or a daemon (--daemon) over a pict-rs store."""

from __future__ import annotations

import logging
import signal
import threading
import time

import click

from fsq.cli.common import (Exit, Progress, db_option, echo_json, host_key_option, json_option,
                            load, open_db, show_key, vault_options, warn)
from fsq.errors import UsageError
from fsq.runtime import build_quarantiner, build_scanner
from fsq.sources.base import open_source

log = logging.getLogger("fsq.scan")


def classifier_options(f):
    opts = [
        click.option("--model", help="open_clip architecture (ViT-L-14) or model-config JSON "
                                      "path [FSQ_MODEL]."),
        click.option("--pretrained", help="open_clip tag (openai) or local checkpoint file "
                                          "[FSQ_PRETRAINED]."),
        click.option("--concepts", type=click.Path(dir_okay=False),
                     help="Concept-set TOML [FSQ_CONCEPTS; default: shipped set]."),
        click.option("--severity", type=click.Choice(["strict", "balanced", "lenient"]),
                     help="Threshold shift [FSQ_SEVERITY, balanced]."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16",
                                                        "int8"]),
                     help="Inference precision [FSQ_PRECISION, auto]; int8 only after "
                          "`fsq model check`."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
                     help="Inference device [FSQ_DEVICE, auto]."),
        click.option("--backend", type=click.Choice(["auto", "torch", "onnx", "openvino"]),
                     help="Image-tower runtime [FSQ_BACKEND, auto]; onnx needs fsq[onnx], "
                          "openvino fsq[openvino]."),
        click.option("--batch-size", type=int, help="Images per model batch [FSQ_BATCH_SIZE]."),
        click.option("--workers", type=int, help="Fetch/decode threads [FSQ_WORKERS]."),
        click.option("--threads", metavar="N|auto",
                     help="torch threads: N, 0 = torch's default, or auto = the cores the "
                          "load average says are free [FSQ_THREADS]."),
        click.option("--unreadable", type=click.Choice(["skip", "flag"]),
                     help="Undecodable files: skip (count, list) or flag [FSQ_UNREADABLE]."),
        click.option("--hash-list", "hash_lists", multiple=True, type=click.Path(),
                     help="Known-bad hash list file (repeatable) [FSQ_HASH_LISTS]."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def print_summary(s, as_json: bool, rescan_stale: bool = False, stamp: bool = False) -> None:
    if as_json:
        echo_json(s.to_json())
        return
    if stamp:  # daemon: each pass's summary line says when it ended
        click.echo(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()), nl=False)
    if s.stale and rescan_stale:
        click.echo(f"{s.stale} object(s) had been decided under another "
                   f"{'/'.join(s.stale_changed) or 'model'}: decided again in this run")
    click.echo(f"run {s.run_id}: {s.status} in {s.seconds:.1f}s: listed {s.listed}, "
               f"scanned {s.scanned}, skipped {s.skipped}, clean {s.clean}, "
               f"flagged {s.flagged}, unreadable {s.unreadable}, errors {s.errors}"
               + (f", {s.inherited} took their pict-rs original's verdict" if s.inherited
                  else "")
               + (f", quarantined {s.quarantined}" if not s.dry_run else " (dry run)")
               + (f", quarantine failed {s.quarantine_failed}" if s.quarantine_failed else ""))
    shown = s.problems  # unchanged keys are skipped too, but they are not problems
    for p in shown[:50]:
        click.echo(f"  {p['status']:<12} {show_key(p['key'])}: {p['reason']}")
    if len(shown) > 50:
        click.echo(f"  ... and {len(shown) - 50} more (see `fsq flagged` / --json)")


@click.command("scan")
@click.option("--all", "mode_all", is_flag=True, help="One full pass over the store (default).")
@click.option("--daemon", is_flag=True, help="Repeat every --interval seconds; a persistent "
                                             "cursor covers downtime.")
@click.option("--source", help="file:///path, sftp://user@host:port/path or s3://bucket/prefix "
                               "[FSQ_SOURCE].")
@click.option("--dry-run", is_flag=True, help="Record verdicts; quarantine nothing.")
@click.option("--rescan", is_flag=True, help="Fetch and classify again even unchanged keys.")
@click.option("--rescan-stale", is_flag=True,
              help="Re-decide exactly the objects decided under another model, concept set, "
                   "severity or rule version (a scan counts them; unchanged keys are skipped "
                   "otherwise).")
@click.option("--interval", type=int, help="Seconds between daemon passes [FSQ_INTERVAL].")
@click.option("--engine", type=click.Choice(["local", "ray"]),
              help="Run the pass on this host's threads or on a Ray cluster "
                   "(docs/scale.md) [FSQ_ENGINE, local].")
@click.option("--ray-address", help="Ray cluster to join (host:6379, auto); default: start "
                                    "one on this host [FSQ_RAY_ADDRESS].")
@vault_options
@classifier_options
@host_key_option
@db_option
@json_option
def scan(mode_all, daemon, source, dry_run, rescan, rescan_stale, interval, engine,
         ray_address, vault,
         vault_public_key, model,
         pretrained, concepts, severity, precision, device, backend, batch_size, workers,
         threads, unreadable, hash_lists, accept_new_host_key, db, as_json):
    """Scan a pict-rs store, classify new images, quarantine what is flagged.

    Without --dry-run flagged files are sealed into the vault (only the vault *public* key is
    needed) and removed from the store once the sealed copy is verified.

    \b
    Examples:
      fsq scan --all --dry-run --source file:///srv/lemmy/volumes/pictrs/files
      fsq scan --daemon --interval 600 --source s3://pictrs-bucket
      fsq scan --all --model ./cfg.json --pretrained ./weights.pt --json
      fsq scan --all --severity strict --rescan-stale   # after changing a decision setting
      fsq scan --all --engine ray --ray-address 10.0.0.5:6379   # a Ray cluster
    """
    if mode_all and daemon:
        raise UsageError("--all and --daemon exclude each other; pick one")
    settings = load(source=source, interval=interval, vault=vault,
                    vault_public_key=vault_public_key, model=model, pretrained=pretrained,
                    concepts=concepts, severity=severity, precision=precision, device=device,
                    backend=backend,
                    batch_size=batch_size, workers=workers, threads=threads,
                    unreadable=unreadable, hash_lists=tuple(hash_lists) or None, db=db,
                    sftp_accept_new_host_key=accept_new_host_key, engine=engine,
                    ray_address=ray_address)
    actor = None if dry_run else build_quarantiner(settings)
    conn = open_db(settings)
    src = open_source(settings.source, settings)
    if actor is not None:
        actor.recover(conn, {src.url: src})  # finish moves a crash left half-done
    from fsq.ledger.state import last_listed
    expected = None if daemon else last_listed(conn, src.url)
    progress = Progress("scan", expected=expected)
    from fsq.engine import build_engine
    runner = build_engine(settings)
    scanner = build_scanner(settings, conn, src, dry_run=dry_run, rescan=rescan,
                            mode="daemon" if daemon else "all", progress=progress, actor=actor,
                            rescan_stale=rescan_stale, engine=runner)
    stop = threading.Event()

    def _on_signal(signum, frame):
        warn(f"signal {signum}: finishing the items in flight, then stopping")
        stop.set()
        scanner.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    if daemon:
        signal.signal(signal.SIGINT, _on_signal)
    try:
        while True:
            if daemon:
                _pull_peers(conn, settings)
            summary = scanner.run_pass()
            progress.start()  # a daemon's next pass lists only what is new: no estimate
            if actor is not None and summary.status == "finished":
                # Flagged earlier but not yet quarantined (dry runs, failed moves): act now.
                res = actor.apply_pending(conn, src)
                summary.quarantined += res["quarantined"]
                summary.quarantine_failed += res["failed"]
                summary.problems.extend({"key": p["key"], "status": "quarantine-failed",
                                         "reason": p["reason"]} for p in res["problems"])
            print_summary(summary, as_json, scanner.cfg.rescan_stale, stamp=daemon)
            if summary.stale and not scanner.cfg.rescan_stale and not rescan:
                warn(f"{summary.stale} object(s) were decided under another "
                     f"{'/'.join(summary.stale_changed) or 'model'} and were not looked at "
                     "again; `fsq scan --rescan-stale` re-decides exactly those")
            if not daemon or stop.is_set():
                break
            scanner.cfg.rescan = scanner.cfg.rescan_stale = False
            log.info("next pass in %ss", settings.interval)
            if stop.wait(settings.interval):
                break
    finally:
        getattr(runner, "shutdown", lambda: None)()  # Ray: its actors, and Ray if fsq started it
        src.close()
        conn.close()
    if summary.status == "interrupted":
        raise Exit(130 if not daemon else 0)
    if summary.quarantine_failed:
        raise Exit(3)


def _pull_peers(conn, settings) -> None:
    """Daemon: fetch trusted peers' new statements before each pass. A failing peer is
    recorded (`fsq peers list`) and logged; it never stops scanning."""
    from fsq.exchange.peers import pull_all
    from fsq.runtime import pull_limits
    if conn.execute("SELECT 1 FROM peers LIMIT 1").fetchone() is None:
        return
    done, failed = pull_all(conn, pull_limits(settings))
    for r in done:
        if r["accepted"] or r["rejected"]:
            log.info("peer %s: %d new statement(s), %d rejected", r["url"], r["accepted"],
                     r["rejected"])
    for f in failed:
        log.warning("peer pull failed: %s", f["error"])


COMMANDS = [scan]
