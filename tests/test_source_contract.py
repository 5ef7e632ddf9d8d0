"""One contract for every Source: local directory, S3 (moto server) and SFTP (OpenSSH sshd).

Each test runs three times against real storage. A ``Harness`` plants and inspects objects
*behind* the Source's back (files on disk for local and SFTP - sshd serves a local temp dir -
and plain boto3 calls for S3), so the Source is checked against the storage itself, not
against its own writes.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from fsq.errors import UsageError
from fsq.sources.base import ObjectError, ObjectMissing, Source

PARAMS = [
    pytest.param("local", id="local"),
    pytest.param("s3", id="s3"),
    pytest.param("sftp", id="sftp", marks=pytest.mark.sshd),
]


@dataclass
class Harness:
    kind: str
    src: Source
    plant: Callable[[str, bytes], None]      # create an object directly in the storage
    raw: Callable[[str], bytes | None]       # read it directly (None = absent)
    mkdir: Callable[[str], None]             # an empty directory (S3: a "folder" marker)
    root: Path | None = None                 # local directory behind local/SFTP
    outside: Path | None = None              # a directory outside the root

    @property
    def has_symlinks(self) -> bool:
        return self.root is not None

    def listed(self) -> dict[str, Any]:
        return {o.key: o for o in self.src.list()}


def _disk_harness(kind: str, root: Path, outside: Path, src: Source) -> Harness:
    def plant(key: str, data: bytes) -> None:
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def raw(key: str) -> bytes | None:
        p = root / key
        return p.read_bytes() if p.is_file() and not p.is_symlink() else None

    def mkdir(key: str) -> None:
        (root / key).mkdir(parents=True, exist_ok=True)

    return Harness(kind, src, plant, raw, mkdir, root, outside)


@pytest.fixture(params=PARAMS)
def h(request, tmp_path) -> Harness:
    kind = request.param
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not yours")
    if kind == "local":
        from fsq.sources.local import LocalSource

        root = tmp_path / "root"
        root.mkdir()
        src: Source = LocalSource(root)
        yield _disk_harness(kind, root, outside, src)
    elif kind == "sftp":
        from fsq.sources.sftp import SFTPSource

        sshd = request.getfixturevalue("sshd")
        src = SFTPSource.from_url(sshd.url(), sshd.settings())
        yield _disk_harness(kind, sshd.root, outside, src)
    else:
        from fsq.sources.s3 import S3Source

        s3 = request.getfixturevalue("s3")
        bucket = s3.make_bucket()
        client = s3.client
        prefix = "pictrs/"

        def plant(key: str, data: bytes) -> None:
            client.put_object(Bucket=bucket, Key=prefix + key, Body=data)

        def raw(key: str) -> bytes | None:
            try:
                return client.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()
            except client.exceptions.NoSuchKey:
                return None

        def mkdir(key: str) -> None:
            client.put_object(Bucket=bucket, Key=prefix + key.rstrip("/") + "/", Body=b"")

        # a neighbour outside the prefix must never show up or be touched
        client.put_object(Bucket=bucket, Key="other/secret.txt", Body=b"not yours")
        src = S3Source.from_url(f"s3://{bucket}/{prefix}", s3.settings())
        hh = Harness(kind, src, plant, raw, mkdir)
        hh.s3 = s3  # type: ignore[attr-defined]
        hh.bucket = bucket  # type: ignore[attr-defined]
        yield hh
    src.close()


# -- listing -------------------------------------------------------------------------------------

def test_list_regular_files_with_relative_posix_keys(h: Harness):
    h.plant("top.jpg", b"1")
    h.plant("ab/cd/ef/01/23/45/67/89/ab/cd/ef0123456789.webp", b"22")
    h.plant("0/1/5b1e3f2a-uuid-style", b"333")
    h.mkdir("empty/nested")
    h.mkdir("empty2")
    before = time.time()
    listed = h.listed()
    assert set(listed) == {"top.jpg", "ab/cd/ef/01/23/45/67/89/ab/cd/ef0123456789.webp",
                           "0/1/5b1e3f2a-uuid-style"}
    for info in listed.values():
        assert info.skip_reason is None
        assert not info.key.startswith("/") and "\\" not in info.key
        assert abs(info.mtime - before) < 600, "mtime must be epoch seconds (UTC)"
    assert listed["top.jpg"].size == 1
    assert listed["0/1/5b1e3f2a-uuid-style"].size == 3


def test_list_of_empty_root_is_empty(h: Harness):
    assert list(h.src.list()) == []


# -- reading -------------------------------------------------------------------------------------

def test_read_returns_exact_bytes(h: Harness):
    data = bytes(range(256)) * 3 + b"\x00\r\n"
    h.plant("a/b.bin", data)
    h.plant("empty.bin", b"")
    assert h.src.read("a/b.bin") == data
    assert h.src.read("empty.bin") == b""
    assert h.src.read("empty.bin", max_bytes=0) == b""


def test_read_max_bytes(h: Harness):
    h.plant("x.bin", b"y" * 100)
    assert h.src.read("x.bin", max_bytes=100) == b"y" * 100
    with pytest.raises(ObjectError) as ei:
        h.src.read("x.bin", max_bytes=99)
    assert not isinstance(ei.value, ObjectMissing)
    assert "too large" in ei.value.reason
    assert h.raw("x.bin") == b"y" * 100  # untouched


def test_read_and_stat_missing(h: Harness):
    h.plant("dir/present", b"1")
    for key in ("absent", "dir/absent", "nodir/absent"):
        with pytest.raises(ObjectMissing):
            h.src.read(key)
        with pytest.raises(ObjectMissing):
            h.src.stat(key)
        assert h.src.exists(key) is False


def test_stat(h: Harness):
    h.plant("s/t.png", b"12345")
    info = h.src.stat("s/t.png")
    assert (info.key, info.size, info.skip_reason) == ("s/t.png", 5, None)
    listed = h.listed()["s/t.png"]
    assert abs(listed.mtime - info.mtime) < 1.0
    assert h.src.exists("s/t.png")


# -- removing ------------------------------------------------------------------------------------

def test_remove_is_idempotent_and_exact(h: Harness):
    h.plant("r/victim.jpg", b"bad")
    h.plant("r/victim.jpg2", b"neighbour")
    h.plant("r/victim", b"prefix neighbour")
    h.src.remove("r/victim.jpg")
    assert h.raw("r/victim.jpg") is None
    assert not h.src.exists("r/victim.jpg")
    h.src.remove("r/victim.jpg")  # again: no error
    h.src.remove("never/existed")
    assert h.raw("r/victim.jpg2") == b"neighbour"
    assert h.raw("r/victim") == b"prefix neighbour"
    assert set(h.listed()) == {"r/victim.jpg2", "r/victim"}


# -- writing (release) ---------------------------------------------------------------------------

def test_write_creates_and_never_overwrites_unless_asked(h: Harness):
    h.src.write("w/new/dir/file.jpg", b"first")
    assert h.raw("w/new/dir/file.jpg") == b"first"
    with pytest.raises(ObjectError) as ei:
        h.src.write("w/new/dir/file.jpg", b"second")
    assert "exists" in ei.value.reason
    assert h.raw("w/new/dir/file.jpg") == b"first"
    h.src.write("w/new/dir/file.jpg", b"third", overwrite=True)
    assert h.src.read("w/new/dir/file.jpg") == b"third"
    # no temp files left behind
    assert set(h.listed()) == {"w/new/dir/file.jpg"}
    if h.root is not None:
        assert sorted(os.listdir(h.root / "w/new/dir")) == ["file.jpg"]


def test_write_refuses_existing_file_planted_behind_its_back(h: Harness):
    h.plant("pre/existing", b"theirs")
    with pytest.raises(ObjectError):
        h.src.write("pre/existing", b"ours")
    assert h.raw("pre/existing") == b"theirs"


# -- path safety ---------------------------------------------------------------------------------

BAD_KEYS = ["../x", "/etc/passwd", "a/../../b", "a/../b", "a//b", "./a", "a/.", "", "a\x00b",
            "..\\x", "a/"]


def test_traversal_keys_rejected_everywhere(h: Harness):
    h.plant("a/b", b"inside")
    for key in BAD_KEYS:
        for call in (lambda: h.src.read(key), lambda: h.src.stat(key),
                     lambda: h.src.remove(key), lambda: h.src.write(key, b"evil"),
                     lambda: h.src.write(key, b"evil", overwrite=True)):
            with pytest.raises(UsageError):
                call()
    assert h.raw("a/b") == b"inside"
    assert set(h.listed()) == {"a/b"}
    if h.outside is not None:
        assert sorted(os.listdir(h.outside)) == ["secret.txt"]


def test_symlinks_listed_never_followed(h: Harness):
    if not h.has_symlinks:
        pytest.skip("S3 has no symlinks (see test_s3_unsafe_keys_listed_never_read)")
    root, outside = h.root, h.outside
    (outside / "dir").mkdir()
    (outside / "dir" / "deep.jpg").write_bytes(b"outside deep")
    h.plant("real/inside.jpg", b"inside")
    os.symlink(outside / "secret.txt", root / "to_file")
    os.symlink(outside, root / "to_dir")
    os.symlink("inside.jpg", root / "real" / "to_inside")
    os.symlink("/nonexistent/target", root / "dangling")
    listed = h.listed()
    assert set(listed) == {"real/inside.jpg", "to_file", "to_dir", "real/to_inside",
                           "dangling"}
    for k in ("to_file", "to_dir", "real/to_inside", "dangling"):
        assert listed[k].skip_reason and "symlink" in listed[k].skip_reason
    assert listed["real/inside.jpg"].skip_reason is None

    for key in ("to_file", "to_dir/secret.txt", "to_dir/dir/deep.jpg", "real/to_inside"):
        with pytest.raises(ObjectError) as ei:
            h.src.read(key)
        assert not isinstance(ei.value, ObjectMissing) or key == "dangling"
    for key in ("to_file", "to_dir/secret.txt"):
        with pytest.raises(ObjectError):
            h.src.remove(key)
    for key in ("to_dir/new.jpg", "to_dir/dir/new.jpg"):
        with pytest.raises(ObjectError):
            h.src.write(key, b"evil")
    with pytest.raises(ObjectError):
        h.src.stat("to_dir/secret.txt")
    assert h.src.stat("to_file").skip_reason
    # nothing outside changed, links still there
    assert (outside / "secret.txt").read_bytes() == b"not yours"
    assert (outside / "dir" / "deep.jpg").read_bytes() == b"outside deep"
    assert sorted(os.listdir(outside)) == ["dir", "secret.txt"]
    assert sorted(os.listdir(outside / "dir")) == ["deep.jpg"]
    assert os.path.islink(root / "to_file") and os.path.islink(root / "to_dir")


def test_non_regular_files_listed_with_reason(h: Harness):
    if not h.has_symlinks:
        pytest.skip("S3 holds only objects")
    os.mkfifo(h.root / "fifo")
    h.plant("ok.jpg", b"1")
    listed = h.listed()
    assert listed["fifo"].skip_reason
    assert listed["ok.jpg"].skip_reason is None
    with pytest.raises(ObjectError):
        h.src.read("fifo")  # must not block on the FIFO either
    with pytest.raises(ObjectError):
        h.src.remove("fifo")
    assert (h.root / "fifo").exists()


# -- names ---------------------------------------------------------------------------------------

ODD_NAMES = ["with space.jpg", "caf\u00e9.png", "emoji \U0001f600.gif", "hash#1", "pct%20x",
             "q?x=1&y", "-leading-dash", "--", "dir with space/\u00fc/x.webp", "semi;colon",
             "quote'\"", "plus+sign", "\u65e5\u672c.jpg", "tab\there", "a.b.c.", "~tilde",
             "star*", "[brackets]", "dollar$HOME", "...dots", " leading space"]


def test_unicode_and_odd_names_round_trip(h: Harness):
    for i, name in enumerate(ODD_NAMES):
        h.plant(name, f"planted {i}".encode())
    listed = h.listed()
    assert set(listed) == set(ODD_NAMES)
    for i, name in enumerate(ODD_NAMES):
        assert listed[name].skip_reason is None, name
        assert h.src.read(name) == f"planted {i}".encode(), name
        assert h.src.stat(name).size == len(f"planted {i}")
    for name in ODD_NAMES:
        h.src.remove(name)
        assert h.raw(name) is None, name
    for i, name in enumerate(ODD_NAMES):
        h.src.write("w/" + name, f"written {i}".encode())
        assert h.raw("w/" + name) == f"written {i}".encode(), name
    assert set(h.listed()) == {"w/" + n for n in ODD_NAMES}


# -- size ----------------------------------------------------------------------------------------

LARGE = 8 * 1024 * 1024 + 13


def test_large_file_round_trip(h: Harness):
    data = os.urandom(LARGE)
    h.plant("big/blob.mp4", data)
    assert h.src.stat("big/blob.mp4").size == LARGE
    assert h.src.read("big/blob.mp4") == data
    with pytest.raises(ObjectError):
        h.src.read("big/blob.mp4", max_bytes=LARGE - 1)
    h.src.write("big/copy.mp4", data[::-1])
    assert h.raw("big/copy.mp4") == data[::-1]


# -- concurrency ---------------------------------------------------------------------------------

def test_concurrent_writes_during_listing(h: Harness):
    before = {f"d{i % 7}/f{i:03d}.jpg" for i in range(120)}
    for k in before:
        h.plant(k, b"x")
    errors: list[BaseException] = []
    added: set[str] = set()
    started = threading.Event()

    def writer() -> None:
        try:
            started.wait(5)
            for i in range(60):
                k = f"d{i % 9}/new{i:03d}.jpg"  # existing and brand-new directories
                h.plant(k, b"new")
                added.add(k)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    seen: list[str] = []
    for info in h.src.list():
        started.set()
        seen.append(info.key)
        time.sleep(0.002)
    started.set()
    t.join(30)
    assert not errors
    assert before <= set(seen), "every object that existed before the listing must be listed"
    assert set(seen) <= before | added
    assert len(seen) == len(set(seen)), "no key listed twice"


def test_concurrent_reads_from_worker_threads(h: Harness):
    blobs = {f"c/{i}.bin": os.urandom(50_000 + i) for i in range(24)}
    for k, v in blobs.items():
        h.plant(k, v)
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def worker(keys: list[str]) -> None:
        try:
            for k in keys:
                results[k] = h.src.read(k)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    keys = sorted(blobs)
    threads = [threading.Thread(target=worker, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == blobs


# -- S3 specifics that stand in for the symlink tests ---------------------------------------------

def test_s3_unsafe_keys_listed_never_read(h: Harness):
    if h.kind != "s3":
        pytest.skip("S3 only")
    c, bucket = h.s3.client, h.bucket  # type: ignore[attr-defined]
    for key in ("pictrs/a/../x", "pictrs/a//b", "pictrs/./c", "pictrs/d/.."):
        c.put_object(Bucket=bucket, Key=key, Body=b"crafted")
    c.put_object(Bucket=bucket, Key="pictrs/folder/", Body=b"")   # console folder marker
    c.put_object(Bucket=bucket, Key="pictrs/ok.jpg", Body=b"fine")
    c.put_object(Bucket=bucket, Key="pictrs-neighbour/x", Body=b"outside the prefix")
    listed = h.listed()
    assert set(listed) == {"a/../x", "a//b", "./c", "d/..", "ok.jpg"}
    for k in ("a/../x", "a//b", "./c", "d/.."):
        assert listed[k].skip_reason, k
        with pytest.raises(UsageError):
            h.src.read(k)
        with pytest.raises(UsageError):
            h.src.remove(k)
    assert listed["ok.jpg"].skip_reason is None
    assert c.get_object(Bucket=bucket, Key="pictrs/a/../x")["Body"].read() == b"crafted"
    assert c.get_object(Bucket=bucket, Key="other/secret.txt")["Body"].read() == b"not yours"


def test_unrepresentable_names_listed_skipped_rest_listed(h: Harness):
    """Issue 11: a name fsq cannot represent (not UTF-8) or act on safely (a backslash) is
    listed with a skip reason naming its bytes, never read, and the rest of the same directory
    is listed as usual. SFTP used to fail the whole directory; local stopped the scan."""
    h.plant("aa/good.jpg", b"fine")
    h.plant("aa/back\\slash.jpg", b"crafted")
    if h.root is not None:  # S3 keys are UTF-8 by definition
        d = os.fsencode(h.root / "aa")
        with open(d + b"/bad\xff\xfe.jpg", "wb") as fh:
            fh.write(b"raw name")
        os.makedirs(d + b"/dir\xff")
        with open(d + b"/dir\xff/inside.jpg", "wb") as fh:
            fh.write(b"under a raw-named directory")
    listed = h.listed()
    assert listed["aa/good.jpg"].skip_reason is None
    back = listed["aa/back\\slash.jpg"]
    assert "backslash" in back.skip_reason
    with pytest.raises(UsageError):
        h.src.read("aa/back\\slash.jpg")
    if h.root is not None:
        raw = "aa/bad\udcff\udcfe.jpg"           # exactly os.fsdecode of the bytes
        assert "not valid UTF-8" in listed[raw].skip_reason
        assert repr(b"aa/bad\xff\xfe.jpg") in listed[raw].skip_reason
        assert "not descended" in listed["aa/dir\udcff"].skip_reason
        assert not any(k.endswith("inside.jpg") for k in listed)
        with pytest.raises(UsageError):
            h.src.read(raw)
        assert len(listed) == 4
    else:
        assert len(listed) == 2
