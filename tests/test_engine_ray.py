"""`fsq scan --engine ray` on a real local Ray cluster (issue 19): the same verdicts as the
local engine for a local and an S3 (moto) store, audit chain valid, quarantine re-reads and
checks before sealing, a classifier actor killed mid-pass costs nothing, and when no actor is
left the objects end as `error: worker lost`, never as done without a verdict.

Ray starts once for the module (2 CPUs, no dashboard) and is shut down at its end."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from fsq.ledger.db import connect
from tests.fixtures.images import jpeg_bytes, make_store, png_bytes
from tests.fixtures.model import concepts_file
from tests.fixtures.s3 import CREDENTIALS

ray = pytest.importorskip("ray")

from tests.test_variants import site as variant_site  # noqa: E402,F401  (a fixture)

pytestmark = pytest.mark.slow
PASS = "correct horse battery staple"
OUTCOMES = {"clean", "flagged", "unreadable"}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster for this module. The workers get the test's isolation: a
    private HOME/cache and the moto credentials (workers read the store with their own
    credentials; the coordinator never ships any)."""
    home = tmp_path_factory.mktemp("ray-home")
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"),
           "AWS_CONFIG_FILE": "/nonexistent-fsq-test-aws-config",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent-fsq-test-aws-creds",
           "AWS_EC2_METADATA_DISABLED": "true", **CREDENTIALS}
    # Workers inherit the environment Ray starts with (runtime_env would need its agent).
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    try:
        yield home  # Ray's token for another driver: HOME/.ray/auth_token
    finally:
        ray.shutdown()


def _store(root: Path) -> dict[str, bytes]:
    """Stills, a duplicate, an animation-free corpus of unreadable bytes: every outcome."""
    keys = make_store(root, 5, seed=21, megapixels=(0.01, 0.03))
    files = {k: (root / k).read_bytes() for k in keys}
    extra = {"aa/dup.png": files[keys[0]], "aa/junk.png": b"not an image at all",
             "aa/zero.png": b"", "aa/cut.jpg": jpeg_bytes(200, 150)[:300],
             "aa/b.png": png_bytes(seed=5)}
    for k, data in extra.items():
        (root / k).parent.mkdir(parents=True, exist_ok=True)
        (root / k).write_bytes(data)
    return {**files, **extra}


def _statuses(db: str) -> dict[str, tuple]:
    """key -> object status (vault entry ids differ between runs), and its verdict: outcome,
    method, reason, media facts, model, and the scores rounded to 5 decimals (a batch of
    another size may change the last float bits)."""
    conn = connect(db)
    try:
        out = {}
        for r in conn.execute(
                "SELECT o.key, o.status, o.reason AS oreason, v.outcome, v.method, v.reason, "
                "v.model_id, v.media_type, v.width, v.height, v.frames, v.details "
                "FROM objects o LEFT JOIN verdicts v ON v.id = o.verdict_id"):
            scores = json.loads(r["details"] or "{}").get("scores") or {}
            reason = r["oreason"] if r["status"] not in ("quarantined",) else "vault entry"
            out[r["key"]] = (r["status"], reason, r["outcome"], r["method"], r["reason"],
                             r["model_id"], r["media_type"], r["width"], r["height"],
                             r["frames"], _round(scores))
        return out
    finally:
        conn.close()


def _round(x):
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, dict):
        return tuple(sorted((k, _round(v)) for k, v in x.items()))
    if isinstance(x, list):
        return tuple(_round(v) for v in x)
    return x


def _scan(fsq, source: str, db: str, vault: str, engine: str, tiny_model, concepts: Path,
          *extra: str, env: dict[str, str] | None = None):
    cfg, ckpt = tiny_model
    r = fsq(["scan", "--all", "--source", source, "--model", str(cfg), "--pretrained",
             str(ckpt), "--concepts", str(concepts), "--db", db, "--vault", vault,
             "--engine", engine, "--json", *extra], env=env)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _init(fsq, tmp_path: Path) -> None:
    pw = tmp_path / "pass.txt"
    pw.write_text(PASS + "\n")
    r = fsq(["init", "--passphrase-file", str(pw)])
    assert r.exit_code == 0, r.output


def _audit_ok(fsq, db: str) -> None:
    r = fsq(["audit", "verify", "--db", db])
    assert r.exit_code == 0, r.output


def test_local_store_same_verdicts_as_local_engine_and_quarantine(ray_cluster, tmp_path, fsq,
                                                                   tiny_model):
    originals = _store(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    _init(fsq, tmp_path)
    concepts = concepts_file(tmp_path, -1.0)  # every readable file flags
    local = _scan(fsq, f"file://{tmp_path / 'a'}", "local.db", "file://./vault-local", "local",
                  tiny_model, concepts)
    remote = _scan(fsq, f"file://{tmp_path / 'b'}", "ray.db", "file://./vault-ray", "ray",
                   tiny_model, concepts)
    assert not remote["errors"], remote["problems"]
    for k in ("listed", "scanned", "clean", "flagged", "unreadable", "errors", "classified",
              "reused", "quarantined"):
        assert local[k] == remote[k], (k, local, remote)
    assert remote["quarantined"] == remote["flagged"] == 7 and remote["unreadable"] == 3
    assert _statuses("local.db") == _statuses("ray.db")
    # The flagged files left the store; the sealed copies decrypt to the original bytes
    # (the coordinator re-read them and checked their sha256 before sealing).
    left = {p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*")
            if p.is_file()}
    assert left == {"aa/junk.png", "aa/zero.png", "aa/cut.jpg"}
    from fsq.quarantine.keys import load_private_key
    from fsq.quarantine.release import decrypt_entry
    from fsq.quarantine.store_dir import DirStore
    from fsq.secrets import Secret
    key = load_private_key("keys/vault.key", Secret(PASS))
    conn = connect("ray.db")
    entries = conn.execute("SELECT * FROM vault_entries WHERE state = 'done'").fetchall()
    assert len(entries) == 7
    vault = DirStore("vault-ray")
    for e in entries:
        _, data = decrypt_entry(vault, e, key)
        assert data == originals[e["key"]]
    conn.close()
    _audit_ok(fsq, "ray.db")
    # A second ray pass over the unchanged store decides nothing again.
    again = _scan(fsq, f"file://{tmp_path / 'b'}", "ray.db", "file://./vault-ray", "ray",
                  tiny_model, concepts)
    assert again["scanned"] == 0 and again["classified"] == 0


def test_s3_store_same_verdicts_as_local_engine(ray_cluster, tmp_path, fsq, tiny_model, s3):
    datas = {f"p/{i:02d}.png": png_bytes(40 + i, 30, seed=60 + i) for i in range(6)}
    datas["p/junk.jpg"] = b"\xff\xd8 not really"
    buckets = []
    for _ in range(2):
        b = s3.make_bucket()
        for k, d in datas.items():
            s3.client.put_object(Bucket=b, Key=k, Body=d)
        buckets.append(b)
    _init(fsq, tmp_path)
    concepts = concepts_file(tmp_path, -1.0)
    env = {"FSQ_S3_ENDPOINT": s3.url, "FSQ_S3_PATH_STYLE": "true"}
    local = _scan(fsq, f"s3://{buckets[0]}/p", "local.db", "file://./vault-local", "local",
                  tiny_model, concepts, env=env)
    remote = _scan(fsq, f"s3://{buckets[1]}/p", "ray.db", "file://./vault-ray", "ray",
                   tiny_model, concepts, env=env)
    assert remote["flagged"] == local["flagged"] == 6
    assert remote["quarantined"] == local["quarantined"] == 6
    assert remote["unreadable"] == local["unreadable"] == 1
    assert _statuses("local.db") == _statuses("ray.db")
    assert s3.keys(buckets[1]) == ["p/junk.jpg"]
    _audit_ok(fsq, "ray.db")


def test_near_identical_frames_skipped_on_ray_as_locally(ray_cluster, tmp_path, fsq,
                                                       tiny_model):
    """Issue 20: the skip is decided where the frames are preprocessed (the Ray decode task),
    so only the frames to classify travel to the actor, and the verdicts equal the local
    engine's, skip records included."""
    from fsq.bench_frames import animation
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "still.png").write_bytes(animation("still", seed=1, size=(96, 72)))
        (tmp_path / d / "cut.png").write_bytes(animation("cut", seed=2, size=(96, 72)))
    _init(fsq, tmp_path)
    concepts = concepts_file(tmp_path, 1.5)  # nothing flags
    for d, engine in (("a", "local"), ("b", "ray")):
        s = _scan(fsq, f"file://{tmp_path / d}", f"{engine}.db", f"file://./vault-{engine}",
                  engine, tiny_model, concepts)
        assert s["classified"] == 2 and s["clean"] == 2, s
    assert _statuses("local.db") == _statuses("ray.db")
    skips = []
    for db in ("local.db", "ray.db"):
        conn = connect(db)
        skips.append({r["key"]: json.loads(r["details"])["frame_skip"] for r in conn.execute(
            "SELECT o.key, v.details FROM objects o JOIN verdicts v ON v.id = o.verdict_id")})
        conn.close()
    assert skips[0] == skips[1]
    assert skips[1]["still.png"]["summary"] == "32 sampled, 1 classified, 31 near-identical"
    assert skips[1]["cut.png"]["classified"] == 2


# --- actor death ---------------------------------------------------------------------------

def _scanner(tmp_path: Path, tiny_model, store: Path, engine):
    from fsq.config import load_settings
    from fsq.ledger.db import connect as open_db
    from fsq.runtime import build_scanner
    from fsq.sources.base import open_source
    cfg, ckpt = tiny_model
    settings = load_settings({"source": f"file://{store}", "model": str(cfg),
                              "pretrained": str(ckpt), "batch_size": 1,
                              "concepts": str(concepts_file(tmp_path, -1.0)),
                              "db": str(tmp_path / "kill.db")})
    conn = open_db(settings.db)
    src = open_source(settings.source, settings)
    return settings, conn, build_scanner(settings, conn, src, dry_run=True,
                                         engine=engine(settings))


def _kill_after_first_batch(settings, **kw):
    from fsq.engine.ray_engine import RayEngine

    class KillOnce(RayEngine):
        """Kills the actor that returned the first batch, while others are queued on it."""

        killed = threading.Event()

        def _classified(self, ref, actor, jobs):
            super()._classified(ref, actor, jobs)
            if not self.killed.is_set():
                self.killed.set()
                ray.kill(actor)

    return KillOnce(settings, **kw)


def _check_every_object_once(conn, n: int) -> list[tuple[str, str]]:
    rows = conn.execute("SELECT id, key, status, reason, verdict_id FROM objects").fetchall()
    assert len(rows) == n and len({r["key"] for r in rows}) == n
    for r in rows:
        assert r["status"] in OUTCOMES or (r["status"] == "error"), dict(r)
        if r["status"] in OUTCOMES:
            assert r["verdict_id"] is not None
    decided = [r for r in rows if r["status"] in OUTCOMES]
    # One verdict per decided object, one 'flagged' audit event per flagged one: no duplicates.
    assert conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == len(decided)
    assert len({r["verdict_id"] for r in decided}) == len(decided)
    flagged = conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'flagged'"
                           ).fetchone()[0]
    assert flagged == sum(r["status"] == "flagged" for r in rows)
    return [(r["status"], r["reason"]) for r in rows]


def test_killed_classifier_actor_mid_pass_loses_nothing(ray_cluster, tmp_path, tiny_model):
    store = tmp_path / "s"
    make_store(store, 16, seed=31, megapixels=(0.01, 0.02))
    settings, conn, scanner = _scanner(
        tmp_path, tiny_model, store, lambda s: _kill_after_first_batch(s, actors=1))
    try:
        s = scanner.run_pass()
        eng = scanner.engine
        assert eng.killed.is_set() and eng.stats["actor_deaths"] == 1
        assert eng.stats["respawned"] == 1
        assert s.status == "finished" and s.scanned == 16 and s.errors == 0
        assert s.flagged == 16 and s.classified == 16
        assert {st for st, _ in _check_every_object_once(conn, 16)} == {"flagged"}
    finally:
        scanner.engine.shutdown()
        conn.close()


def test_no_actor_left_records_worker_lost_then_next_pass_decides(ray_cluster, tmp_path,
                                                                  tiny_model):
    from fsq.engine.ray_engine import RayEngine
    store = tmp_path / "s"
    make_store(store, 10, seed=41, megapixels=(0.01, 0.02))
    settings, conn, scanner = _scanner(
        tmp_path, tiny_model, store,
        lambda s: _kill_after_first_batch(s, actors=1, max_respawns=0))
    try:
        s = scanner.run_pass()
        assert s.status == "finished" and s.scanned == 10
        assert s.errors >= 1 and s.flagged + s.errors == 10
        rows = _check_every_object_once(conn, 10)
        assert {r for r in rows if r[0] == "error"} == {("error", "worker lost")}
    finally:
        scanner.engine.shutdown()
    # The next pass (a healthy engine) decides exactly the objects that were lost.
    scanner.engine = RayEngine(settings, actors=1)
    try:
        s2 = scanner.run_pass()
        assert s2.scanned == s.errors and s2.flagged == s.errors and s2.errors == 0
        assert {r[0] for r in _check_every_object_once(conn, 10)} == {"flagged"}
    finally:
        scanner.engine.shutdown()
        conn.close()


@pytest.mark.postgres
def test_variants_take_their_originals_verdict_under_ray(ray_cluster, variant_site, fsq):
    """pict-rs variant linkage is engine-neutral: the coordinator fetches and hashes the
    variants itself, Ray classifies only the originals (tests/test_variants.py's store)."""
    from tests import test_variants as V
    store, env = variant_site
    r = fsq(["scan", "--all", "--json", "--engine", "ray"], env=env)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["classified"] == 2 and s["inherited"] == 5 and s["quarantined"] == 4, s
    conn = connect("fsq.db")
    (inc,) = conn.execute("SELECT * FROM incidents").fetchall()
    keys = {e["key"] for e in conn.execute("SELECT key FROM vault_entries WHERE state='done' "
                                           "AND incident_id=?", (inc["id"],))}
    conn.close()
    assert inc["sha256"] == V.sha(V.ORIGINALS[V.B]) and keys == {V.B, V.B1, V.B2, V.BM}


def test_workers_get_no_vault_database_or_service_secrets():
    from fsq.config import SETTINGS, load_settings
    from fsq.engine.ray_tasks import WORKER_GROUPS, worker_settings
    secrets = {"vault_passphrase": "pw-canary", "lemmy_password": "lemmy-canary",
               "pictrs_api_key": "api-canary", "db": "/srv/fsq/state-canary.db",
               "vault_private_key": "/keys/private-canary"}
    values = worker_settings(load_settings({k: v for k, v in secrets.items()
                                            if k in {s.name for s in SETTINGS}}))
    text = json.dumps(values, default=str)
    assert "canary" not in text
    assert all(s.group in WORKER_GROUPS or values[s.name] == s.default for s in SETTINGS)


def test_killed_coordinator_leaves_nothing_half_done(ray_cluster, tmp_path, tiny_model, fsq):
    """SIGKILL `fsq scan --engine ray` (joined to the module's cluster) mid-pass: the next run
    decides exactly the objects not yet recorded; no object has two verdicts."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.fixtures.images import REPO
    store = tmp_path / "s"
    n = 40
    make_store(store, n, seed=51, megapixels=(0.05, 0.1))
    cfg, ckpt = tiny_model
    concepts = concepts_file(tmp_path, -1.0)
    args = ["scan", "--all", "--dry-run", "--source", f"file://{store}", "--model", str(cfg),
            "--pretrained", str(ckpt), "--concepts", str(concepts), "--engine", "ray",
            "--batch-size", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO),
               RAY_AUTH_TOKEN_PATH=str(ray_cluster / ".ray" / "auth_token"))
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "fsq", *args, "--ray-address", address],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if Path("fsq.db").exists():
                try:
                    c = connect("fsq.db")
                    done = c.execute("SELECT COUNT(*) FROM objects WHERE verdict_id IS NOT "
                                     "NULL").fetchone()[0]
                    c.close()
                except Exception:  # the schema is still being created
                    done = 0
                if done >= 3:
                    break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]  # mid-pass
    r = fsq([*args, "--json"])
    assert r.exit_code == 0, r.stderr
    conn = connect("fsq.db")
    try:
        _check_every_object_once(conn, n)
        assert conn.execute("SELECT COUNT(*) FROM objects WHERE status = 'flagged'"
                            ).fetchone()[0] == n
    finally:
        conn.close()
    assert fsq(["audit", "verify"]).exit_code == 0


def test_an_engine_that_cannot_start_fails_the_run_with_its_reason(tmp_path, tiny_model):
    """(A Ray cluster out of reach, say): the run is recorded failed, not left running."""
    from fsq.errors import ExternalError

    class Unreachable:
        def start(self, scanner):
            raise ExternalError("cannot start or join Ray (FSQ_RAY_ADDRESS=10.9.9.9:6379): "
                                "timed out")

        def close(self):
            pass

    store = tmp_path / "s"
    make_store(store, 2, seed=61, megapixels=(0.01, 0.02))
    _, conn, scanner = _scanner(tmp_path, tiny_model, store, lambda s: Unreachable())
    try:
        with pytest.raises(ExternalError):
            scanner.run_pass()
        run = conn.execute("SELECT * FROM scan_runs").fetchone()
        assert run["status"] == "failed" and "cannot start or join Ray" in run["error"]
        assert conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 0
    finally:
        conn.close()
