"""Counters of `fsq serve`, rendered in the Prometheus text exposition format (version 0.0.4).

Why by hand and not ``prometheus_client``: the server exposes a dozen fixed series, the format
is a few lines of text, and an admin installing ``fsq[serve]`` should not need one more package
(nor its process-global registry, which would leak series between the in-process test servers).

Every series is always present (zero until it moves) so that dashboards and alert rules can
use ``rate()`` and sums from the first scrape. Nothing here ever holds a secret, a key, a
client address or a hash: only counts, sizes and durations.

Thread-safety: the event loop and the batch worker thread both update these; one lock guards
every change and the rendering.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

PREFIX = "fsq_serve_"

# Answer outcomes and the reasons behind non-2xx answers and fail-open answers.
OUTCOMES = ("accepted", "rejected")
REJECT_REASONS = ("flagged", "unauthorized", "too_large", "error", "overload", "timeout",
                  "slow_body")
FAIL_OPEN_REASONS = ("error", "overload", "timeout")
VERDICTS = ("clean", "flagged", "unreadable", "error")
# Connections or requests cut off to keep the server responsive (fsq.server.http).
DROP_KINDS = ("slow_body", "header_timeout", "over_capacity")
# Decode budget breaches (issue 11): cpu = worker killed at FSQ_DECODE_SECONDS, pixels =
# frames past FSQ_DECODE_PIXELS left unexamined.
BUDGET_KINDS = ("cpu", "pixels")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)  # non-cumulative; summed when rendered
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, le in enumerate(self.buckets):
            if value <= le:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, acc = [], 0
        for le, n in zip(self.buckets, self.counts):
            acc += n
            out.append(f'{name}_bucket{{le="{_num(le)}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {_num(self.sum)}")
        out.append(f"{name}_count {self.count}")
        return out


def _num(v: float) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.fail_open = dict.fromkeys(FAIL_OPEN_REASONS, 0)
        self.verdicts = dict.fromkeys(VERDICTS, 0)
        self.dropped = dict.fromkeys(DROP_KINDS, 0)
        self.batches = 0
        self.model_calls = 0
        self.sealed = 0
        self.seal_failures = 0
        self.record_failures = 0
        self.budget_breaches = dict.fromkeys(BUDGET_KINDS, 0)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.inflight = 0
        self.queue_depth: Callable[[], int] = lambda: 0
        self.model_loaded = False

    # -- updates ----------------------------------------------------------------------------

    def answered(self, status: int, seconds: float, reason: str | None = None,
                 fail_open: str | None = None) -> None:
        """One /validate answer: 2xx counts as accepted, anything else as rejected(reason)."""
        with self._lock:
            if 200 <= status < 300:
                self.requests["accepted"] += 1
            else:
                self.requests["rejected"] += 1
                if reason in self.rejected:
                    self.rejected[reason] += 1
            if fail_open in self.fail_open:
                self.fail_open[fail_open] += 1
            self.latency.observe(seconds)

    def verdict(self, outcome: str) -> None:
        with self._lock:
            self.verdicts[outcome] = self.verdicts.get(outcome, 0) + 1

    def drop(self, kind: str) -> None:
        """One connection or request cut off (slow_body, header_timeout, over_capacity)."""
        with self._lock:
            self.dropped[kind] = self.dropped.get(kind, 0) + 1
    def budget_breach(self, kind: str) -> None:
        with self._lock:
            if kind in self.budget_breaches:
                self.budget_breaches[kind] += 1

    def batch(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.batch_size.observe(size)

    def add(self, name: str, n: int = 1) -> None:
        """Increment a plain counter attribute (model_calls, sealed, seal_failures, ...)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    # -- rendering --------------------------------------------------------------------------

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []

            def family(name: str, kind: str, help_: str, samples: list[str]) -> None:
                lines.append(f"# HELP {PREFIX}{name} {help_}")
                lines.append(f"# TYPE {PREFIX}{name} {kind}")
                lines.extend(samples)

            def labelled(name: str, label: str, values: dict[str, int]) -> list[str]:
                return [f'{PREFIX}{name}{{{label}="{k}"}} {v}' for k, v in values.items()]

            family("requests_total", "counter",
                   "Validation requests answered: accepted (2xx) or rejected (other status).",
                   labelled("requests_total", "outcome", self.requests))
            family("rejected_total", "counter", "Non-2xx answers by reason.",
                   labelled("rejected_total", "reason", self.rejected))
            family("fail_open_total", "counter",
                   "Uploads accepted unchecked because of --on-error accept, by reason.",
                   labelled("fail_open_total", "reason", self.fail_open))
            family("verdicts_total", "counter",
                   "Verdicts reached (error = the check failed), by verdict.",
                   labelled("verdicts_total", "verdict", self.verdicts))
            family("dropped_total", "counter",
                   "Connections or requests cut off to keep the server responsive: bodies "
                   "slower than FSQ_SERVE_BODY_TIMEOUT (answered 408), headers not complete "
                   "within FSQ_SERVE_HEADER_TIMEOUT, connections over "
                   "FSQ_SERVE_MAX_CONNECTIONS.",
                   labelled("dropped_total", "kind", self.dropped))
            family("batches_total", "counter", "Batches taken off the queue by the worker.",
                   [f"{PREFIX}batches_total {self.batches}"])
            family("model_calls_total", "counter",
                   "Classifier calls (one per batch with anything left to classify).",
                   [f"{PREFIX}model_calls_total {self.model_calls}"])
            family("batch_size", "histogram", "Uploads per batch.",
                   self.batch_size.lines(PREFIX + "batch_size"))
            family("request_duration_seconds", "histogram",
                   "Time from request start to answer, /validate only.",
                   self.latency.lines(PREFIX + "request_duration_seconds"))
            family("sealed_total", "counter", "Rejected uploads sealed into the vault.",
                   [f"{PREFIX}sealed_total {self.sealed}"])
            family("seal_failures_total", "counter",
                   "Flagged uploads that could not be sealed (still rejected; see the log).",
                   [f"{PREFIX}seal_failures_total {self.seal_failures}"])
            family("record_failures_total", "counter",
                   "Verdicts that could not be written to the state database.",
                   [f"{PREFIX}record_failures_total {self.record_failures}"])
            family("decode_budget_breaches_total", "counter",
                   "Uploads over their decode budget (answered by --on-error), by kind.",
                   labelled("decode_budget_breaches_total", "kind", self.budget_breaches))
            family("queue_depth", "gauge", "Uploads waiting for the batch worker.",
                   [f"{PREFIX}queue_depth {self.queue_depth()}"])
            family("inflight", "gauge", "Validation requests being handled.",
                   [f"{PREFIX}inflight {self.inflight}"])
            family("model_loaded", "gauge", "1 once the classifier is loaded.",
                   [f"{PREFIX}model_loaded {int(self.model_loaded)}"])
            return "\n".join(lines) + "\n"
