"""Content signals: exact hashes (sha256, md5), PDQ perceptual hashes, hash banks, list
import/export and matching (ARCHITECTURE.md data flow: "allowlist / hash banks" and
"perceptual hashes (PDQ) -> banks").

The signal type names are those of Meta's python-threatexchange and Hasher-Matcher-Actioner
(HMA), so hash lists interoperate: ``pdq`` (256-bit PDQ, 64 hex digits), ``md5``, ``sha256``
and ``video_md5`` (the MD5 of a whole video file; for fsq the same as ``md5`` of the bytes).

Modules: ``pdq`` (hashing a decoded frame), ``index`` (nearest PDQ within a distance over
up to millions of entries), ``banks`` (the banks in the state database), ``formats`` (CSV /
JSON lines), ``match`` (what the scanner and ``fsq serve`` call).
"""

from __future__ import annotations

SIGNAL_TYPES = ("pdq", "md5", "sha256", "video_md5")
HEX_LENGTH = {"pdq": 64, "md5": 32, "sha256": 64, "video_md5": 32}
