"""Untrusted bytes -> frames (ARCHITECTURE.md "Layout": media/).

The interface the pipeline and the server use; the modules behind it may grow (video,
container checks) without the callers changing.
"""

from fsq.media.decode import VIDEO_TYPES, Decoded, Unreadable, decode, hashes, sniff

__all__ = ["VIDEO_TYPES", "Decoded", "Unreadable", "decode", "hashes", "sniff"]
