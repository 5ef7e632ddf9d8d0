"""How a pass is executed (ARCHITECTURE.md layout: ``engine/``).

The scanner (fsq.pipeline.Scanner) is the coordinator in every engine: it lists the source,
admits objects (unchanged keys skipped), records every verdict, writes the audit log and
quarantines. An engine only executes the per-object work between admission and recording:

- ``local`` (fsq.engine.local): worker threads of this process fetch, hash, decode and
  preprocess; the scanner's thread runs the model in batches. Today's behaviour.
- ``ray`` (fsq.engine.ray_engine): Ray tasks fetch, hash, decode and preprocess on the cluster's CPU
  workers; a pool of classifier actors (one model load each) returns the scores. The bytes
  stay on the workers; the coordinator re-reads a flagged object and checks its sha256 before
  sealing it. Workers never get the state database or a vault key.

An engine has four methods, called from the scanner's (writer) thread:

    start(scanner)   before a pass
    limit() -> int   how many objects may be in flight (backpressure)
    submit(item) -> concurrent.futures.Future[_Item]
                     the item comes back prepared: with ``error``, or a ``verdict``, or
                     ``tensors`` for the scanner to classify (local)
    close()          after a pass, also a failed one
"""

from __future__ import annotations

from typing import Any

ENGINES = ("local", "ray")


def build_engine(settings: Any, name: str | None = None, address: str | None = None) -> Any:
    """The engine named by ``name`` or FSQ_ENGINE (``address``/FSQ_RAY_ADDRESS for ray)."""
    name = name or getattr(settings, "engine", "local") or "local"
    if name == "local":
        from fsq.engine.local import LocalEngine
        return LocalEngine()
    if name == "ray":
        from fsq.engine.ray_engine import RayEngine
        return RayEngine.from_settings(settings, address=address)
    from fsq.errors import UsageError
    raise UsageError(f"unknown engine {name!r}; use one of: {', '.join(ENGINES)}")
