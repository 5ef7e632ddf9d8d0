"""Untrusted bytes -> frames (ARCHITECTURE.md "Layout": media/).

The interface the pipeline and the server use; the modules behind it may grow (video,
container checks) without the callers changing:

* ``DecodeRequest``: the limits of one decode (fsq.media.budget).
* ``DecodePool.decode(data, request) -> Decoded``: decode in a worker process under the CPU
  budget (fsq.media.pool); ``decode(data, request)`` does the same in this process, without
  the CPU budget (tests, benchmarks).
* ``Decoded``: frames + facts (size, frame count, sampled frames, truncation, incomplete);
  ``Unreadable``: nothing decodable, with a reason and a kind.
* ``sniff`` / ``hashes``: magic-byte media type, content hashes.
"""

from fsq.media.budget import DecodeRequest
from fsq.media.decode import Decoded, Unreadable, decode
from fsq.media.sniff import ALLOWED, VIDEO_TYPES, hashes, sniff

__all__ = ["ALLOWED", "VIDEO_TYPES", "DecodePool", "DecodeRequest", "Decoded", "Unreadable",
           "decode", "hashes", "sniff"]


def __getattr__(name: str):
    if name == "DecodePool":  # imported on first use: it starts processes, tests need not
        from fsq.media.pool import DecodePool
        return DecodePool
    raise AttributeError(name)
