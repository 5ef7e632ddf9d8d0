"""How many torch threads the model runs on: the ``threads`` setting (FSQ_THREADS, --threads).

Why this exists: torch's intra-op threads meet at a barrier after every operator, so one of
them that the kernel puts off the CPU for a neighbour's time slice stalls all the others. On a
2-core box with one busy neighbour process (pict-rs, PostgreSQL, a second scan), ViT-B-32 bf16
fell from 77 to 24 images/s at 2 threads while 1 thread held 38-40 (issue 20). On a quiet box
every core is worth having. So ``auto`` looks at the box when the model loads:

* cores: the CPUs this process may run on (``os.sched_getaffinity``: taskset, cpusets),
* others: the 1-minute load average minus this process's own share of it,
* threads = cores minus the cores the others keep busy (``round(others)``, half rounds down),
  at least 1, at most cores. A quiet box (others < 0.5) gets every core, which is torch's
  default; a 2-core box with one busy neighbour gets 1.

It is decided once, when the model loads (a long ``fsq serve`` does not re-decide); the
choice and its reason are logged and shown in ``--json`` output (``threads``). Integers keep
their old meaning: N > 0 = exactly N threads, 0 = torch's default. The load average is
host-wide, also inside a container, which is what matters when the cores are shared.

No torch import here: the policy is a pure function of (cores, load), tested as such.
"""

from __future__ import annotations

import math
import os
from typing import Union

AUTO = "auto"
Threads = Union[int, str]   # a whole number >= 0, or "auto"
QUIET_BELOW = 0.5           # other load below this: the box counts as quiet


def parse(value: str) -> Threads:
    """The setting's parser: ``auto`` or a whole number >= 0 (ValueError otherwise)."""
    v = value.strip().lower()
    if v == AUTO:
        return AUTO
    try:
        n = int(v)
    except ValueError:
        raise ValueError("expected auto or a whole number (0 = torch's default)") from None
    if n < 0:
        raise ValueError("must be auto or at least 0")
    return n


def choose(cores: int, load1: float, own: float = 0.0) -> tuple[int, str]:
    """(threads, reason) for ``cores`` usable CPUs, the 1-minute load average ``load1`` and
    this process's own share of that load ``own``. Pure."""
    cores = max(1, int(cores))
    others = max(0.0, float(load1) - max(0.0, float(own)))
    if cores == 1:
        return 1, "auto: 1 core"
    if others < QUIET_BELOW:
        return cores, (f"auto: {cores} threads, one per core (load of other processes "
                       f"{others:.2f} < {QUIET_BELOW}: quiet)")
    busy = math.ceil(others - 0.5)           # round half down: 1.5 keeps one core busy
    n = max(1, min(cores, cores - busy))
    return n, (f"auto: {n} of {cores} cores (load of other processes {others:.2f}: shared; "
               "one torch thread per free core)")


def own_load(cpu_seconds: float, age_seconds: float) -> float:
    """This process's share of the 1-minute load average, estimated from its CPU time: a
    process running ``r`` threads for ``t`` seconds adds ``r * (1 - exp(-t / 60))`` to the
    kernel's exponentially decayed average."""
    if age_seconds <= 0:
        return 0.0
    r = max(0.0, cpu_seconds / age_seconds)
    return r * (1.0 - math.exp(-age_seconds / 60.0))


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve(setting: Threads) -> tuple[int, str]:
    """The setting -> (threads to set, 0 = leave torch's default; reason)."""
    if setting != AUTO:
        n = int(setting)
        return n, (f"{n} (FSQ_THREADS)" if n > 0 else "torch's default (FSQ_THREADS=0)")
    try:
        load1 = os.getloadavg()[0]
    except OSError:  # no load average on this platform: behave like torch's default
        return 0, "auto: no load average here, torch's default"
    t = os.times()
    own = own_load(t.user + t.system, _process_age())
    return choose(usable_cores(), load1, own)

