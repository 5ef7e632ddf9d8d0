"""DirStore: the file:// vault store (real files, real fsync, a real SIGKILL)."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fsq.errors import UsageError, VaultError
from fsq.quarantine.store import VaultMissing, open_vault
from fsq.quarantine.store_dir import DirStore

REPO = Path(__file__).resolve().parent.parent
A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def store(tmp_path):
    return DirStore.from_url(f"file://{tmp_path / 'vault'}")


def test_put_get_exists_names_delete(store):
    assert list(store.names()) == []
    assert not store.exists(f"{A}.blob")
    store.put(f"{A}.blob", b"blob bytes")
    store.put(f"{A}.key", bytearray(b"key bytes"))
    store.put(f"{B}.blob", memoryview(b"other"))
    assert store.get(f"{A}.blob") == b"blob bytes"
    assert store.get(f"{A}.key") == b"key bytes"
    assert store.exists(f"{A}.key")
    assert list(store.names()) == [f"{A}.blob", f"{A}.key", f"{B}.blob"]
    store.delete(f"{A}.key")
    store.delete(f"{A}.key")  # idempotent
    assert not store.exists(f"{A}.key")
    assert list(store.names()) == [f"{A}.blob", f"{B}.blob"]
    with pytest.raises(VaultMissing) as ei:
        store.get(f"{A}.key")
    assert ei.value.exit_code == 3


def test_large_object_exact(store):
    data = os.urandom(5 * 1024 * 1024 + 7)
    store.put(f"{A}.blob", data)
    assert store.get(f"{A}.blob") == data


def test_put_refuses_overwrite(store):
    store.put(f"{A}.blob", b"first")
    with pytest.raises(VaultError, match="refusing to overwrite"):
        store.put(f"{A}.blob", b"second")
    assert store.get(f"{A}.blob") == b"first"
    assert sorted(os.listdir(store.root)) == [f"{A}.blob"]  # no temp file left


@pytest.mark.parametrize("name", [
    "../x", f"../{A}.blob", "a/b", f"{A[:2]}/{A}.blob", "/etc/passwd", f"/tmp/{A}.blob", "",
    ".", "..", f"{A.upper()}.blob", f"{A}.txt", f"{A}.blob\n", f"{A}.blob\0", f"{A[:-1]}.key",
    ".tmp-0123456789abcdef", f" {A}.blob",
])
def test_invalid_names_rejected(store, tmp_path, name):
    for call in (lambda: store.put(name, b"x"), lambda: store.get(name),
                 lambda: store.delete(name), lambda: store.exists(name)):
        with pytest.raises(UsageError, match="invalid vault object name"):
            call()
    assert os.listdir(store.root) == []
    assert sorted(os.listdir(tmp_path)) == ["home", "vault", "work"]


def test_permissions(tmp_path):
    old = os.umask(0)
    try:
        s = DirStore(tmp_path / "deep" / "vault")
        s.put(f"{A}.blob", b"x")
    finally:
        os.umask(old)
    assert _mode(s.root) == 0o700
    assert _mode(os.path.join(s.root, f"{A}.blob")) == 0o600


def test_existing_open_root_is_tightened(tmp_path, caplog):
    root = tmp_path / "vault"
    root.mkdir()
    root.chmod(0o755)
    with caplog.at_level(logging.WARNING):
        DirStore(root)
    assert _mode(root) == 0o700
    assert any("tightened" in r.getMessage() for r in caplog.records)


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "vault").write_text("not a dir")
    with pytest.raises(VaultError, match="not a directory"):
        DirStore(tmp_path / "vault")


def test_urls(tmp_path, monkeypatch):
    work = Path.cwd()  # conftest chdirs into a temp work dir
    s = DirStore.from_url("file://./quarantine")
    assert s.root == str(work / "quarantine") and (work / "quarantine").is_dir()
    assert s.url == f"file://{work / 'quarantine'}"
    assert isinstance(open_vault("file://./quarantine", None), DirStore)
    assert DirStore.from_url(str(tmp_path / "bare")).root == str(tmp_path / "bare")
    with pytest.raises(UsageError):
        DirStore.from_url("s3://bucket/prefix")
    with pytest.raises(UsageError):
        DirStore.from_url("file://")


def test_temp_files_ignored_and_cleaned(store):
    store.put(f"{A}.blob", b"kept")
    leftover = os.path.join(store.root, ".tmp-0123456789abcdef")
    with open(leftover, "wb") as f:
        f.write(b"half a blob")
    foreign = os.path.join(store.root, "README")
    with open(foreign, "w") as f:
        f.write("not ours")
    assert list(store.names()) == [f"{A}.blob"]
    assert store.cleanup_temp(min_age_seconds=3600) == []  # too fresh to be stale
    assert os.path.exists(leftover)
    assert store.cleanup_temp() == [".tmp-0123456789abcdef"]
    assert not os.path.exists(leftover)
    assert os.path.exists(foreign)  # not ours: left alone
    assert store.get(f"{A}.blob") == b"kept"
    assert store.cleanup_temp() == []


def test_put_fsyncs_file_and_directory(store, monkeypatch):
    """The durability steps really run: fsync of the object's data and of the directory."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store.put(f"{A}.blob", b"durable")
    assert any(os.path.basename(p).startswith(".tmp-") for p in synced)  # data, before link
    assert synced[-1] == store.root  # directory, after link
    synced.clear()
    store.delete(f"{A}.blob")
    assert synced == [store.root]


_CRASH_CHILD = """
import sys
from fsq.quarantine.store_dir import DirStore
DirStore(sys.argv[1]).put(sys.argv[2], b"x" * 100000)
print("survived")
"""


def test_sigkill_during_put_leaves_only_a_temp_file(store):
    env = dict(os.environ, FSQ_TESTONLY_CRASH_AT="dirstore-put-before-link")
    p = subprocess.run([sys.executable, "-c", _CRASH_CHILD, store.root, f"{A}.blob"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert "survived" not in p.stdout
    assert "FSQ_TESTONLY_CRASH_AT is set" in p.stderr
    assert list(store.names()) == []
    assert not store.exists(f"{A}.blob")
    temps = [n for n in os.listdir(store.root) if n.startswith(".tmp-")]
    assert len(temps) == 1
    assert store.cleanup_temp() == temps
    assert os.listdir(store.root) == []
    store.put(f"{A}.blob", b"retried")  # the next run completes the step
    assert store.get(f"{A}.blob") == b"retried"
