"""Test-only switches. Nothing here may ever be enabled in production.

Each switch is an ``FSQ_TESTONLY_*`` environment variable (config.py refuses them in ``.env``
files) and announces itself on stderr, so a switch left on by accident cannot go unnoticed:

* ``FSQ_TESTONLY_WEAKEN_KDF=1``: ``fsq.quarantine.keys`` derives the private-key encryption key
  with tiny KDF costs, so the test suite does not spend seconds per key. The costs actually
  used are recorded in the key file, so such a key still opens later - and is weak for ever.
* ``FSQ_TESTONLY_CRASH_AT=<name>``: ``crash_point(<name>)`` SIGKILLs the process on the spot,
  which is how the crash-safety tests interrupt a quarantine between two steps.

This module writes to stderr directly (not through logging) on purpose: the warning must
appear whatever the log configuration is.
"""

from __future__ import annotations

import os
import signal
import sys

WEAKEN_KDF_ENV = "FSQ_TESTONLY_WEAKEN_KDF"
CRASH_AT_ENV = "FSQ_TESTONLY_CRASH_AT"

_crash_warned = False


def _warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr, flush=True)


def weaken_kdf() -> bool:
    """True when ``FSQ_TESTONLY_WEAKEN_KDF=1``; warns on stderr every time it says so."""
    if os.environ.get(WEAKEN_KDF_ENV) != "1":
        return False
    _warn(f"{WEAKEN_KDF_ENV} is set: key derivation is weak; never use this outside tests")
    return True


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``FSQ_TESTONLY_CRASH_AT`` equals ``name``.

    SIGKILL, not an exception: no ``finally`` block, atexit hook or buffered write runs, which
    is what a power cut or the OOM killer does to a real run.
    """
    global _crash_warned
    target = os.environ.get(CRASH_AT_ENV)
    if not target:
        return
    if not _crash_warned:
        _crash_warned = True
        _warn(f"{CRASH_AT_ENV} is set: fsq will kill itself at crash point {target!r}; "
              "never use this outside tests")
    if target == name:
        _warn(f"{CRASH_AT_ENV}: killing this process at crash point {name!r}")
        os.kill(os.getpid(), signal.SIGKILL)
