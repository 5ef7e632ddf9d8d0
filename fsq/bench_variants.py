"""The variant-linkage benchmark (``python -m fsq.bench --variants-store N``).

A synthetic pict-rs store of N originals (fsq.synth: JPEG, PNG, WebP, 0.3-2 MP) with 2
variants each, made from the original the way pict-rs makes them (a 256 px WebP thumbnail and a
640 px JPEG resize), under pict-rs 0.5.7 keys, and pict-rs-shaped repo rows (``hashes``,
``variants``, tests/data/pictrs_0_5.sql's tables) in a real PostgreSQL: a throwaway server
started from the Debian binaries (``initdb``/``pg_ctl``, as the tests do) on loopback with a
random password, stopped afterwards. Without the binaries the measurement is skipped, saying so.

Two dry-run passes over the same store, each on a fresh state database, wired as `fsq scan
--all --dry-run` wires them (fsq.runtime.build_scanner), the model loaded before the pass:

* without linkage (FSQ_VARIANT_LINKAGE=off): every file is classified -> files/s;
* with linkage (the repo configured): only originals are classified, variants take their
  verdict (method ``variant-of``) -> objects/s.

The ratio is the issue's target (>= 2.5x). The run also checks that every variant's verdict is
its original's and that each original went through the model once.
"""

from __future__ import annotations

import glob
import io
import os
import pwd
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

VARIANTS = (("thumbnail/256/webp", 256, "webp"), ("resize/640/jpeg", 640, "jpeg"))
SCHEMA = """
CREATE TABLE hashes (hash text PRIMARY KEY, identifier text NOT NULL UNIQUE,
    motion_identifier text, created_at timestamp NOT NULL DEFAULT now(), blurhash text);
CREATE TABLE variants (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    hash text NOT NULL REFERENCES hashes(hash) ON DELETE CASCADE, variant text NOT NULL,
    identifier text NOT NULL, accessed timestamp NOT NULL DEFAULT now(), UNIQUE (hash, variant));
CREATE INDEX variants_identifier ON variants(identifier);
CREATE INDEX hashes_motion ON hashes(motion_identifier);
CREATE TABLE aliases (alias text PRIMARY KEY, hash text NOT NULL REFERENCES hashes(hash),
    token text NOT NULL);
CREATE TABLE details (identifier text PRIMARY KEY, json jsonb NOT NULL);
CREATE TABLE proxies (url text PRIMARY KEY, alias text NOT NULL REFERENCES aliases(alias),
    accessed timestamp NOT NULL DEFAULT now());
CREATE TABLE store_migrations (old_identifier text PRIMARY KEY, new_identifier text NOT NULL);
"""


# --- a throwaway PostgreSQL (tests/fixtures/postgres.py does the same for the tests) ----------

def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


@contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """Yields a superuser URL of a fresh server on loopback, or None (with the reason
    printed) if there is no PostgreSQL to start here."""
    bindir = _bindir()
    if bindir is None:
        print("variants: skipped: no PostgreSQL server binaries (initdb, pg_ctl); install the "
              "Debian package `postgresql`", file=sys.stderr)
        yield None
        return
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            print("variants: skipped: running as root without a `postgres` OS user",
                  file=sys.stderr)
            yield None
            return
        user = "postgres"

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run((["runuser", "-u", user, "--"] if user else []) + argv,
                              capture_output=True, text=True)

    base = Path(tempfile.mkdtemp(prefix="fsq-bench-pg-"))
    data, sock, pwfile = base / "data", base / "sock", base / "pw"
    sock.mkdir()
    password = secrets.token_urlsafe(16)
    pwfile.write_text(password + "\n")
    if user:
        for p in (base, sock, pwfile):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    os.chmod(base, 0o700)
    started = False
    try:
        r = run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile",
                 str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                 "--locale=C.UTF-8", "--no-sync"])
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        r = run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                 f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off", "start"])
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-500:]}")
        started = True
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)


# --- the store ---------------------------------------------------------------------------------

def build(root: Path, n: int, seed: int = 3) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """Write N originals and their variants; returns (key, sha256, [(variant, key)])."""
    import hashlib

    from PIL import Image

    from fsq.synth import encode, pictrs_key, synthetic_image
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = random.Random(seed)
    out = []
    fmts = ("jpeg", "png", "webp")
    for i in range(n):
        mp = rng.uniform(0.3, 2.0) * 1e6
        w = int((mp * 4 / 3) ** 0.5)
        im = synthetic_image(rng, w, int(w * 3 / 4))
        fmt = fmts[i % len(fmts)]
        data = encode(im, fmt, rng)
        key = pictrs_key(rng, fmt)
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
        derived = []
        for name, size, vfmt in VARIANTS:
            small = im.copy()
            small.thumbnail((size, size), Image.LANCZOS)
            buf = io.BytesIO()
            small.save(buf, vfmt.upper(), quality=80)
            vkey = pictrs_key(rng, vfmt)
            (root / vkey).parent.mkdir(parents=True, exist_ok=True)
            (root / vkey).write_bytes(buf.getvalue())
            derived.append((name, vkey))
        out.append((key, hashlib.sha256(data).hexdigest(), derived))
    return out


def seed_repo(url: str, items: list[tuple[str, str, list[tuple[str, str]]]]) -> None:
    import psycopg

    from fsq.lemmy.pictrs_repo import encode_hash
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(SCHEMA)
        with c.cursor() as cur:
            cur.executemany("INSERT INTO hashes (hash, identifier) VALUES (%s, %s)",
                            [(encode_hash(sha, 0, 1), key) for key, sha, _ in items])
            cur.executemany("INSERT INTO variants (hash, variant, identifier) VALUES (%s,%s,%s)",
                            [(encode_hash(sha, 0, 1), name, vkey)
                             for _, sha, d in items for name, vkey in d])


# --- the measurement ---------------------------------------------------------------------------

def _pass(work: Path, store: Path, label: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from fsq.bench import dry_run_pass, remove_db
    from fsq.config import load_settings
    db = work / f"variants-{label}.db"
    remove_db(db)
    settings = load_settings({**overrides, "db": str(db), "source": f"file://{store}",
                              "device": "cpu", "log_level": "error"},
                             environ={}, cwd=work)
    with dry_run_pass(settings, "the variants benchmark scan") as (conn, s):
        outcomes = {r["key"]: (r["status"], r["method"]) for r in conn.execute(
            "SELECT o.key, o.status, v.method FROM objects o JOIN verdicts v "
            "ON v.id = o.verdict_id")}
    return {"objects": s.scanned, "classified": s.classified, "inherited": s.inherited,
            "seconds": s.seconds, "per_s": s.scanned / s.seconds, "outcomes": outcomes}


def run(work: Path, n: int, *, model: str, pretrained: str, batch_size: int, workers: int,
        threads: int, precision: str = "auto", backend: str = "auto",
        rounds: int = 1) -> dict[str, Any] | None:
    """Both passes (best of ``rounds`` each); None if no PostgreSQL could be started."""
    store = work / "variants-store"
    print(f"variants: writing {n} originals with {len(VARIANTS)} variants each ...",
          file=sys.stderr, flush=True)
    items = build(store, n)
    base = {"model": model, "pretrained": pretrained, "batch_size": batch_size,
            "workers": workers, "threads": threads, "precision": precision,
            "backend": backend}
    with throwaway_postgres() as url:
        if url is None:
            return None
        seed_repo(url, items)
        best: dict[str, dict[str, Any]] = {}
        passes = [("off", {"variant_linkage": "off"}), ("linked", {"pictrs_database_url": url})]
        for i in range(rounds):
            # Alternate the order, so that a load that drifts during the run (a shared machine)
            # does not always favour the same pass.
            for label, extra in (passes if i % 2 == 0 else passes[::-1]):
                print(f"variants: pass {label} ...", file=sys.stderr, flush=True)
                r = _pass(work, store, label, {**base, **extra})
                if label not in best or r["per_s"] > best[label]["per_s"]:
                    best[label] = r
    linked, off = best["linked"], best["off"]
    # Every variant took its original's verdict; each original was classified once.
    out = linked.pop("outcomes")
    off.pop("outcomes")
    for key, _sha, derived in items:
        for _name, vkey in derived:
            if out[vkey] != (out[key][0], "variant-of"):
                raise RuntimeError(f"variant {vkey} did not inherit {key}: {out[vkey]}")
    if linked["classified"] != n or linked["inherited"] != n * len(VARIANTS):
        raise RuntimeError(f"unexpected linkage counts: {linked}")
    return {"originals": n, "variants_per_original": len(VARIANTS), "model": model,
            "linked": linked, "off": off, "ratio": linked["per_s"] / off["per_s"]}


def report(r: dict[str, Any]) -> list[str]:
    lk, off = r["linked"], r["off"]
    return [f"variant store: {r['originals']} originals x {r['variants_per_original']} variants "
            f"({r['model']}): with pict-rs linkage {lk['per_s']:.1f} objects/s "
            f"({lk['objects']} objects, {lk['classified']} classified, {lk['inherited']} "
            f"inherited, {lk['seconds']:.2f} s); without {off['per_s']:.1f} files/s "
            f"({off['classified']} classified, {off['seconds']:.2f} s); ratio "
            f"{r['ratio']:.2f}x (target >= 2.5x: {'met' if r['ratio'] >= 2.5 else 'NOT met'})"]
