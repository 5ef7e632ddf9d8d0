"""The local engine: today's worker threads (fsq.pipeline's module docstring)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class LocalEngine:
    """Fetch, hash, decode and preprocess on a pool of threads of this process; decoding in
    the decode pool's worker processes (fsq.media.pool); the scanner classifies in batches."""

    name = "local"

    def __init__(self) -> None:
        self._scanner: Any = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self, scanner: Any) -> None:
        from fsq.media import DecodePool  # worker processes start on the first decode
        cfg = scanner.cfg
        self._scanner = scanner
        scanner._decoder = DecodePool(cfg.decode_workers, cfg.decode_seconds)
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="fsq-fetch")

    def limit(self) -> int:
        cfg = self._scanner.cfg
        return max(4, cfg.workers * 2 + cfg.batch_size * 2)

    def submit(self, item: Any) -> Future:
        assert self._pool is not None
        return self._pool.submit(self._scanner._prepare, item)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._scanner is not None and self._scanner._decoder is not None:
            self._scanner._decoder.close()
