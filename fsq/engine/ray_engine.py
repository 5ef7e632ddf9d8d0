"""The Ray engine: a pass's per-object work on a Ray cluster (docs/scale.md).

    coordinator (fsq scan)           Ray CPU workers                 classifier actors
    list, admit ------------------>  fetch_hash(key) -> facts, bytes
    precheck (DB: allowlist, lists,  (bytes stay in the node's
      banks, peers, verdict cache)    object store)
      undecided ------------------>  decode_prepare(bytes) -> facts, tensors
    PDQ bank match (DB)                                   tensors --> classify(batch)
    record verdict, audit, quarantine  <----------------------------- decisions

Plain tasks + actors rather than Ray Data: the coordinator must decide between the stages
(admission and the precheck read the state database, which never leaves it), records each
object as it finishes in a listing of unknown length, and needs a per-object outcome when a
worker dies (``worker lost`` for that object, the pass goes on). Ray Data runs a whole
dataset through fixed stages, its failure unit is a block (a failed block fails the dataset,
or its rows are dropped with max_errored_blocks), and its backpressure is not tied to the
coordinator's writes. With tasks the bound is simple: at most ``limit()`` objects are in
flight, whatever the listing's length (the scanner waits for the oldest one before it admits
another).

Failures: a task whose worker or node dies is retried by Ray (``task_retries``; lineage
reconstructs lost bytes). A batch whose actor dies goes to another actor (a dead actor is
replaced, at most ``max_respawns`` times per engine), at most ``batch_retries`` times; then
each of its objects is recorded as ``error: worker lost``. Nothing is recorded as done
without a verdict; the coordinator is the only writer, so killing it leaves only objects not
yet recorded, which the next run does (Ray ends a dead driver's tasks and actors).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from fsq.errors import ExternalError, FsqError, SourceError, UsageError

log = logging.getLogger("fsq.engine")

WORKER_LOST = "worker lost"
FLUSH_S = 0.05          # a partial batch waits at most this long for company
BATCHES_PER_ACTOR = 2   # queued on each actor, so it never idles between batches


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("the ray engine needs Ray: pip install 'fsq[ray]'") from None
    return ray


@dataclass
class _Job:
    item: Any
    fut: Future
    stage: str = "fetch"                 # fetch -> decode -> classify
    data_ref: Any = None
    tensors_ref: Any = None
    n: int = 0                           # frames to classify
    attempts: int = 0                    # batches lost with their actor
    queued: float = field(default_factory=time.monotonic)


class RayEngine:
    name = "ray"

    def __init__(self, settings: Any, *, address: str | None = None, actors: int = 0,
                 task_retries: int = 2, batch_retries: int = 2,
                 max_respawns: int | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        from fsq.engine.ray_tasks import worker_settings
        self._worker_settings = worker_settings(settings)
        self.address = address
        self.actors_wanted = actors
        self.task_retries = task_retries
        self.batch_retries = batch_retries
        self.max_respawns = max_respawns
        self.init_kwargs = init_kwargs or {}
        self.actors: list[Any] = []      # live classifier actors (tests kill one)
        self.stats = {"fetched": 0, "decoded": 0, "batches": 0, "actor_deaths": 0,
                      "batch_retries": 0, "respawned": 0, "worker_lost": 0}
        self._owns_ray = False
        self._model_id: str | None = None
        self._pre_ref: Any = None
        self._fatal: BaseException | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Any, address: str | None = None) -> "RayEngine":
        return cls(settings, address=address or settings.ray_address,
                   actors=settings.ray_actors)

    # -- the engine interface (fsq.engine) ----------------------------------------------------

    def start(self, scanner: Any) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "configure_logging": False}
            kw.update(self.init_kwargs)
            try:
                ray.init(address=self.address, **kw)
            except Exception as exc:  # unreachable, refused token, version mismatch...
                raise ExternalError(f"cannot start or join Ray (FSQ_RAY_ADDRESS="
                                    f"{self.address or ''}): {_one_line(exc)}") from None
            self._owns_ray = True
        self._ray = ray
        self._scanner = scanner
        cfg = scanner.cfg
        self._cfg = cfg
        self._fetch = ray.remote(num_returns=2, max_retries=self.task_retries)(
            _tasks().fetch_hash)
        self._decode = ray.remote(num_returns=2, max_retries=self.task_retries)(
            _tasks().decode_prepare)
        spec = {"token": uuid.uuid4().hex, "url": scanner.source.url,
                "settings": self._worker_settings}
        self._spec_ref = ray.put(spec)
        # What a worker needs of the pass's configuration: not the peers' trust policy (it
        # reads the database), nor the hash lists (matched here).
        self._cfg_ref = ray.put(replace(cfg, trust=None, hash_lists=(), decision_settings={}))
        res = ray.cluster_resources()
        self._cpus = max(1, int(res.get("CPU", 1)))
        self._gpus = int(res.get("GPU", 0))
        self._lock = threading.Lock()
        self._waiting: dict[Any, _Job] = {}   # meta ref of a fetch/decode task -> job
        self._batches: dict[Any, tuple[Any, list[_Job]]] = {}  # result ref -> actor, jobs
        self._busy: dict[Any, int] = {}       # actor -> batches queued on it
        self._queue: deque[_Job] = deque()    # prepared, waiting for an actor
        self._respawns = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="fsq-ray", daemon=True)
        self._thread.start()

    def limit(self) -> int:
        # Enough to keep every CPU and actor busy, small enough that the object store holds
        # only a few hundred MB whatever the listing's length.
        return max(8, 2 * self._cpus + BATCHES_PER_ACTOR * self._cfg.batch_size
                   * self._n_actors())

    def submit(self, item: Any) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()  # always resolved by the loop, never cancelled
        if self._fatal is not None:
            fut.set_exception(self._fatal)
            return fut
        job = _Job(item, fut)
        meta, data = self._fetch.remote(self._spec_ref, item.info.key, self._cfg.max_bytes)
        job.data_ref = data
        with self._lock:
            self._waiting[meta] = job
        self.stats["fetched"] += 1
        return fut

    def close(self) -> None:
        """End of a pass: stop the loop, drop what is still in flight (the scanner records
        only what came back). Actors stay for the next pass; ``shutdown`` ends them."""
        self._closed = True
        if not hasattr(self, "_waiting"):  # start() failed before the pass began
            return
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for ref in list(self._waiting):
            self._ray.cancel(ref, force=True)
        self._waiting.clear()
        self._batches.clear()
        for job in self._queue:
            self._fail(job, WORKER_LOST)
        self._queue.clear()

    def shutdown(self) -> None:
        """Kill the actors; stop Ray if this engine started it."""
        ray = self._ray if hasattr(self, "_ray") else None
        if ray is None:
            return
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # already dead
                pass
        self.actors = []
        self._model_id = self._pre_ref = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    # -- the loop (one thread: it alone touches the jobs) -------------------------------------

    def _loop(self) -> None:
        ray = self._ray
        while not self._closed:
            with self._lock:
                refs = list(self._waiting) + list(self._batches)
            if not refs:
                time.sleep(0.005)
                continue
            try:
                done, _ = ray.wait(refs, num_returns=1, timeout=0.05)
                if done:
                    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in done:
                    self._handle(ref)
                self._dispatch()
            except BaseException as exc:  # never leave the scanner waiting forever
                log.exception("ray engine loop failed")
                self._fatal = exc if isinstance(exc, FsqError) else ExternalError(
                    f"ray engine failed: {_one_line(exc)}")
                self._fail_all()
                return

    def _handle(self, ref: Any) -> None:
        with self._lock:
            job = self._waiting.pop(ref, None)
            batch = None if job is not None else self._batches.pop(ref, None)
        if job is not None:
            try:
                (self._fetched if job.stage == "fetch" else self._decoded)(job, ref)
            except BaseException as exc:
                if not job.fut.done():
                    job.fut.set_exception(exc)
                raise
        elif batch is not None:
            self._classified(ref, *batch)

    def _get(self, job: _Job, ref: Any) -> dict[str, Any] | None:
        """A task's facts, or None after recording the job as failed."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the task's own code raised: a bug
            self._fail(job, f"error in worker: {_one_line(getattr(exc, 'cause', exc))}")
        except ray.exceptions.RayError:  # worker/node died, Ray's retries exhausted
            self.stats["worker_lost"] += 1
            self._fail(job, WORKER_LOST)
        return None

    def _fetched(self, job: _Job, ref: Any) -> None:
        meta = self._get(job, ref)
        if meta is None:
            return
        it = job.item
        if "source_error" in meta:
            job.fut.set_exception(SourceError(meta["source_error"]))
            return
        if "error" in meta:
            it.error = meta["error"]
            job.fut.set_result(it)
            return
        it.sha256, it.md5, it.size = meta["sha256"], meta["md5"], meta["size"]
        # The same decisions without decoding as a local scan (allowlist, lists, banks, peers,
        # cache), read here: the database never leaves the coordinator.
        self._scanner._early_verdict(it, lambda: meta["sniff"])
        if it.verdict is not None:
            job.data_ref = None
            job.fut.set_result(it)
            return
        if self._pre_ref is None:
            self._start_actors()  # the model is loaded only when something needs it
        job.stage = "decode"
        meta2, job.tensors_ref = self._decode.remote(self._cfg_ref, self._pre_ref,
                                                     job.data_ref)
        job.data_ref = None  # the decode task holds the bytes now
        self.stats["decoded"] += 1
        with self._lock:
            self._waiting[meta2] = job

    def _decoded(self, job: _Job, ref: Any) -> None:
        meta = self._get(job, ref)
        if meta is None:
            return
        it = job.item
        if "verdict" in meta:  # unreadable (policy decides)
            it.verdict = meta["verdict"]
            job.fut.set_result(it)
            return
        from fsq.signals import match as signals
        it.decoded, it.pdq = meta["decoded"], meta["pdq"]
        it.verdict = signals.match_frames(self._scanner.pdq, it.pdq, it.decoded)
        if it.verdict is not None or meta["n"] == 0:
            job.tensors_ref = None
            job.fut.set_result(it)
            return
        job.stage, job.n, job.queued = "classify", meta["n"], time.monotonic()
        self._queue.append(job)

    def _dispatch(self) -> None:
        """Send prepared jobs in batches of about batch_size frames to actors with room."""
        if self._queue and not self.actors:  # every actor died, no replacement left
            for j in self._queue:
                self._fail(j, WORKER_LOST)
            self._queue.clear()
        while self._queue:
            frames = sum(j.n for j in self._queue)
            waiting = any(j.stage == "decode" for j in self._waiting.values())
            if (frames < self._cfg.batch_size and waiting
                    and time.monotonic() - self._queue[0].queued < FLUSH_S):
                return  # more frames are on their way
            actor = self._free_actor()
            if actor is None:
                return
            batch: list[_Job] = []
            n = 0
            while self._queue and (not batch or n + self._queue[0].n <= self._cfg.batch_size):
                j = self._queue.popleft()
                batch.append(j)
                n += j.n
            ref = actor.classify.remote([j.tensors_ref for j in batch])
            self._busy[actor] = self._busy.get(actor, 0) + 1
            self.stats["batches"] += 1
            with self._lock:
                self._batches[ref] = (actor, batch)

    def _classified(self, ref: Any, actor: Any, jobs: list[_Job]) -> None:
        ray = self._ray
        self._busy[actor] = max(0, self._busy.get(actor, 1) - 1)
        try:
            results = ray.get(ref)
        except ray.exceptions.RayActorError:
            self._actor_lost(actor)
            for j in jobs:
                j.attempts += 1
                if j.attempts > self.batch_retries:
                    self.stats["worker_lost"] += 1
                    self._fail(j, WORKER_LOST)
                else:
                    self.stats["batch_retries"] += 1
                    self._queue.appendleft(j)
            return
        except ray.exceptions.RayError as exc:  # classify itself raised, or lost tensors
            for j in jobs:
                self._fail(j, f"error in classifier: {_one_line(exc)}")
            return
        from fsq.pipeline import clip_verdict
        assert self._model_id is not None
        for j, (decision, frame) in zip(jobs, results):
            it = j.item
            it.verdict = clip_verdict(decision, frame, it.decoded, self._model_id, self._cfg)
            it.classified = True
            j.tensors_ref = None
            j.fut.set_result(it)

    # -- actors ------------------------------------------------------------------------------

    def _n_actors(self) -> int:
        if self._gpus:
            return self.actors_wanted or self._gpus
        # CPU actors hold one CPU each for the whole pass: at least one CPU stays for the
        # fetch/decode tasks, or the pass could never finish.
        return max(1, min(self.actors_wanted or self._cpus // 4, self._cpus - 1))

    def _new_actor(self) -> Any:
        from fsq.classify.concepts import load_concepts
        ws = self._worker_settings
        concepts = load_concepts(ws["concepts"])
        factory = partial(_tasks().build_classifier, ws, concepts)
        opts: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0}
        if self._gpus:
            opts["num_gpus"] = 1
        else:
            # A one-CPU cluster: the actor shares the CPU with the tasks rather than wait.
            opts["num_cpus"] = 1 if self._cpus >= 2 else 0
        return self._ray.remote(_tasks().ClassifierActor).options(**opts).remote(factory)

    def _start_actors(self) -> None:
        ray = self._ray
        self.actors = [self._new_actor() for _ in range(self._n_actors())]
        try:
            info = ray.get(self.actors[0].info.remote())
        except ray.exceptions.RayError as exc:
            raise _cause(exc) from None
        self._model_id = info["model_id"]
        self._pre_ref = ray.put(info["pre"])
        log.info("ray: %d classifier actor(s) of %s on %d CPU(s), %d GPU(s)",
                 len(self.actors), self._model_id, self._cpus, self._gpus)

    def _free_actor(self) -> Any:
        free = [a for a in self.actors if self._busy.get(a, 0) < BATCHES_PER_ACTOR]
        return min(free, key=lambda a: self._busy.get(a, 0)) if free else None

    def _actor_lost(self, actor: Any) -> None:
        if actor not in self.actors:
            return
        self.actors.remove(actor)
        self._busy.pop(actor, None)
        self.stats["actor_deaths"] += 1
        budget = self.max_respawns if self.max_respawns is not None else 2 * self._n_actors()
        if self._respawns < budget:
            self._respawns += 1
            self.stats["respawned"] += 1
            self.actors.append(self._new_actor())
            log.warning("ray: a classifier actor died; started another (%d of %d)",
                        self._respawns, budget)
        else:
            log.warning("ray: a classifier actor died; no replacement left (%d used)", budget)

    # -- failures ----------------------------------------------------------------------------

    def _fail(self, job: _Job, reason: str) -> None:
        job.item.error = reason
        job.data_ref = job.tensors_ref = None
        if not job.fut.done():
            job.fut.set_result(job.item)

    def _fail_all(self) -> None:
        with self._lock:
            jobs = list(self._waiting.values()) + [j for _, js in self._batches.values()
                                                   for j in js]
            self._waiting.clear()
            self._batches.clear()
        for j in jobs + list(self._queue):
            if not j.fut.done():
                j.fut.set_exception(self._fatal)  # type: ignore[arg-type]
        self._queue.clear()


def _tasks() -> Any:
    from fsq.engine import ray_tasks
    return ray_tasks


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text[:limit]


def _cause(exc: BaseException) -> BaseException:
    """The FsqError an actor raised while starting (a bad model setting: exit 2), if any."""
    seen = 0
    e: Any = exc
    while e is not None and seen < 5:
        if isinstance(e, FsqError):
            return e
        e = getattr(e, "cause", None) or getattr(e, "__cause__", None) \
            or getattr(e, "error", None)
        seen += 1
    return ExternalError(f"the classifier actor could not start: {_one_line(exc)}")
