"""Wiring from Settings to the core objects (classifier, scanner, vault, quarantiner).

Shared by the CLI commands, ``fsq demo``, ``fsq serve`` and the benchmark, so that every entry
point builds the same objects the same way. Heavy imports (torch) happen only when a
classifier is actually built.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from fsq.config import Settings
from fsq.pipeline import ScanConfig, Scanner
from fsq.sources.base import Source

log = logging.getLogger("fsq.scan")

DEFAULT_KEY_DIR = Path("keys")
DEFAULT_PUBLIC = DEFAULT_KEY_DIR / "vault.pub"
DEFAULT_PRIVATE = DEFAULT_KEY_DIR / "vault.key"


def public_key_path(settings: Settings) -> Path:
    return Path(settings.vault_public_key).expanduser() if settings.vault_public_key \
        else DEFAULT_PUBLIC


def private_key_path(settings: Settings) -> Path:
    return Path(settings.vault_private_key).expanduser() if settings.vault_private_key \
        else DEFAULT_PRIVATE


def load_concept_set(settings: Settings):
    from fsq.classify.concepts import load_concepts
    return load_concepts(settings.concepts)


def build_classifier(settings: Settings, concepts=None):
    from fsq.classify import threads as thread_policy
    from fsq.classify.clip import ClipClassifier
    threads, why = thread_policy.resolve(settings.threads)
    log.info("torch threads: %s", why)
    return ClipClassifier(
        model=settings.model, pretrained=settings.pretrained,
        concepts=concepts if concepts is not None else load_concept_set(settings),
        severity=settings.severity, precision=settings.precision, device=settings.device,
        cache_dir=settings.cache_dir, threads=threads, backend=settings.backend,
        int8_approved=_int8_approvals(settings) if settings.precision == "int8" else None)


def _int8_approvals(settings: Settings):
    """checkpoint sha256 -> approved? from the state DB (`fsq model check`)."""
    def approved(sha256: str) -> bool:
        from fsq.classify.int8_check import approved as lookup
        from fsq.ledger.db import connect
        try:
            conn = connect(settings.db, create=False)
        except Exception:  # no database, no approval
            return False
        try:
            return lookup(conn, sha256)
        finally:
            conn.close()
    return approved


def scan_config(settings: Settings, *, dry_run: bool, rescan: bool, mode: str,
                concepts=None, rescan_stale: bool = False) -> ScanConfig:
    from fsq.classify.rule import RULE_VERSION
    from fsq.exchange.trust import TrustPolicy
    from fsq.ledger.stale import settings_digest
    cs = concepts if concepts is not None else load_concept_set(settings)
    trust = TrustPolicy(safe=settings.trust_safe, unsafe=settings.trust_unsafe)
    return ScanConfig(
        settings_digest=settings_digest(model=settings.model, pretrained=settings.pretrained,
                                        concepts_digest=cs.digest, severity=settings.severity,
                                        rule_version=RULE_VERSION),
        rescan_stale=rescan_stale,
        dry_run=dry_run, rescan=rescan, unreadable=settings.unreadable,
        max_bytes=settings.max_bytes, max_pixels=settings.max_pixels,
        batch_size=settings.batch_size, workers=settings.workers, mode=mode,
        decode_workers=settings.decode_workers, decode_seconds=settings.decode_seconds,
        decode_pixels=settings.decode_pixels, max_frames=settings.max_frames,
        frame_skip=settings.frame_skip,
        max_video_seconds=settings.max_video_seconds, appended_data=settings.appended_data,
        hash_lists=tuple(settings.hash_lists), concepts_digest=cs.digest,
        pdq_distance=settings.pdq_distance, pdq_safe_distance=settings.pdq_safe_distance,
        severity=settings.severity, rule_version=RULE_VERSION,
        decision_settings=decision_settings(settings, cs.digest, RULE_VERSION),
        trust=trust if trust.active else None)


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def decision_settings(settings: Settings, concepts_digest: str, rule_version: str
                      ) -> dict[str, Any]:
    """The settings that can change a verdict (no secrets), for the audit trail."""
    return {
        "model": settings.model, "pretrained": settings.pretrained,
        "concepts": settings.concepts or "(shipped)", "concepts_digest": concepts_digest,
        "severity": settings.severity, "rule_version": rule_version,
        "unreadable": settings.unreadable, "max_pixels": settings.max_pixels,
        "decode_pixels": settings.decode_pixels, "decode_seconds": settings.decode_seconds,
        "max_frames": settings.max_frames, "max_video_seconds": settings.max_video_seconds,
        "frame_skip": settings.frame_skip,
        "appended_data": settings.appended_data,
        "max_bytes": settings.max_bytes,
        "hash_lists": {p: _file_digest(p) for p in settings.hash_lists},
        "trust_safe": settings.trust_safe, "trust_unsafe": settings.trust_unsafe,
        "pdq_distance": settings.pdq_distance, "pdq_safe_distance": settings.pdq_safe_distance,
        "variant_linkage": "repo" if variant_linkage_on(settings) else "off",
    }


def variant_linkage_on(settings: Settings) -> bool:
    """FSQ_VARIANT_LINKAGE=auto and the pict-rs repo configured (fsq.engine.variants)."""
    return settings.variant_linkage != "off" and bool(settings.pictrs_database_url)


def build_variant_planner(settings: Settings):
    """The scanner's variant planner, or None (every file classified). The repo connection
    opens at the first listing batch; a repo out of reach only turns linkage off."""
    if not variant_linkage_on(settings):
        return None
    from fsq.engine.variants import VariantPlanner
    from fsq.lemmy.variants import RepoLinks
    return VariantPlanner(RepoLinks(str(settings.pictrs_database_url)))


def signing_key_path(settings: Settings) -> Path:
    return Path(settings.attest_key).expanduser() if settings.attest_key \
        else DEFAULT_KEY_DIR / "attest.key"


def pull_limits(settings: Settings):
    from fsq.exchange.peers import PullLimits
    return PullLimits(max_bytes=settings.peers_max_response_bytes,
                      max_statements=settings.peers_max_statements,
                      timeout=settings.peers_timeout)


def _load_announced(settings: Settings, concepts):
    """build_classifier, saying so: loading ViT-L-14 on a CPU is a long silent step."""
    log.info("loading the CLIP model (%s, weights %s) on %s; this can take a minute on a CPU",
             settings.model, settings.pretrained, settings.device)
    t0 = time.monotonic()
    clf = build_classifier(settings, concepts)
    log.info("model %s loaded in %.1fs", getattr(clf, "model_id", "?"), time.monotonic() - t0)
    return clf


def build_quarantiner(settings: Settings):
    from fsq.quarantine.move import Quarantiner
    return Quarantiner.from_settings(settings)


def build_scanner(settings: Settings, conn: sqlite3.Connection, source: Source, *,
                  dry_run: bool, rescan: bool = False, mode: str = "all",
                  progress: Callable[..., None] | None = None,
                  actor: Any = None, rescan_stale: bool = False, engine: Any = None
                  ) -> Scanner:
    # Concept-file errors must surface before any listing starts (exit 2 at once).
    concepts = load_concept_set(settings)
    cfg = scan_config(settings, dry_run=dry_run, rescan=rescan, mode=mode, concepts=concepts,
                      rescan_stale=rescan_stale)
    return Scanner(conn, source, cfg,
                   classifier_factory=lambda: _load_announced(settings, concepts),
                   actor=actor, progress=progress, db_path=settings.db, engine=engine,
                   variants=build_variant_planner(settings))
