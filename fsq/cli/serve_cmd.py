"""`fsq serve`: check every pict-rs upload before it is stored (pict-rs external validation)."""

from __future__ import annotations

import click

from fsq.cli.common import db_option, load, vault_options
from fsq.cli.scan_cmd import classifier_options


@click.command("serve")
@click.option("--listen", help="HOST:PORT to listen on [FSQ_SERVE_LISTEN, 127.0.0.1:14051]. "
                               "Anything but loopback needs --token.")
@click.option("--token", help="Shared token pict-rs must send in the URL path "
                              "(/validate/TOKEN) or an X-Fsq-Token header [FSQ_SERVE_TOKEN]. "
                              "Prefer the environment variable: flags show up in `ps`.")
@click.option("--on-error", type=click.Choice(["accept", "reject"]),
              help="Answer when the check fails, times out or is overloaded: reject (503, "
                   "pict-rs drops the upload) or accept (200, logged and counted as "
                   "fail-open) [FSQ_SERVE_ON_ERROR, reject].")
@click.option("--max-body", type=int, help="Largest upload in bytes; bigger gets 413 "
                                           "[FSQ_SERVE_MAX_BODY, 104857600].")
@click.option("--timeout", type=float, help="Seconds a request may wait for its verdict, "
                                            "below pict-rs's 30 s [FSQ_SERVE_TIMEOUT, 20].")
@click.option("--queue", type=int, help="Uploads waiting at most before the overload policy "
                                        "applies [FSQ_SERVE_QUEUE, 64].")
@click.option("--batch-wait-ms", type=int, help="Milliseconds a lone upload waits to share a "
                                                "model batch [FSQ_SERVE_BATCH_WAIT_MS, 10].")
@vault_options
@classifier_options
@db_option
def serve(listen, token, on_error, max_body, timeout, queue, batch_wait_ms, vault,
          vault_public_key, model, pretrained, concepts, severity, precision, device,
          backend, batch_size, workers, threads, unreadable, hash_lists, db):
    """Answer pict-rs's external validation: 2xx accepts an upload, 406 rejects it.

    Each upload gets the scanner's checks (allowlist, hash lists, decode, CLIP). A rejected
    upload is sealed into the vault, with an incident and audit events, before the answer goes
    out, because pict-rs deletes it. Only the vault *public* key is needed. Also serves
    GET /healthz and GET /metrics (Prometheus). Stop with SIGTERM or Ctrl-C: requests in
    flight are answered first. Slow or half-open clients are cut off by
    FSQ_SERVE_HEADER_TIMEOUT, FSQ_SERVE_BODY_TIMEOUT (408) and FSQ_SERVE_MAX_CONNECTIONS.
    See docs/serve.md for the pict-rs and docker settings.

    \b
    Examples:
      FSQ_SERVE_TOKEN=$(cat /etc/fsq/serve-token) fsq serve --listen 0.0.0.0:14051
      # pict-rs: PICTRS__MEDIA__EXTERNAL_VALIDATION=http://fsq:14051/validate/<token>
      fsq serve --on-error accept --model ./cfg.json --pretrained ./weights.pt
    """
    from fsq.server.validate import serve_forever

    def text(v):  # strings go through the settings parsers (range checks, one-line errors)
        return None if v is None else str(v)

    settings = load(serve_listen=listen, serve_token=token, serve_on_error=on_error,
                    serve_max_body=text(max_body), serve_timeout=text(timeout),
                    serve_queue=text(queue), serve_batch_wait_ms=text(batch_wait_ms),
                    vault=vault,
                    vault_public_key=vault_public_key, model=model, pretrained=pretrained,
                    concepts=concepts, severity=severity, precision=precision, device=device,
                    backend=backend,
                    batch_size=batch_size, workers=workers, threads=threads,
                    unreadable=unreadable, hash_lists=tuple(hash_lists) or None, db=db)
    periodic = None
    if settings.audit_witness:  # witness the audit head routinely while the daemon runs
        from fsq.custody.witness import Periodic
        from fsq.ledger.db import connect
        from fsq.runtime import public_key_path
        periodic = Periodic(lambda: connect(settings.db, create=False), settings,
                            public_key_path(settings), settings.audit_witness_interval)
    try:
        serve_forever(settings)
    finally:
        if periodic is not None:
            periodic.stop()


COMMANDS = [serve]
