"""Crypto-shredding of a directory vault really removes the wrapped key (issue 12).

A plain unlink leaves the bytes of ``<id>.key`` in the filesystem's free blocks; the directory
store now overwrites a key object with random bytes and fsyncs before unlinking. The test runs
the real store on a freshly made ext4 image, loop-mounted (needs root and a loop device), then
searches the raw image for the old bytes. The blob (deleted by plain unlink on purpose: without
its key it is noise) is the control that proves the search would find bytes that were left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from fsq.quarantine.store_dir import DirStore, overwrite_in_place


def _loop_mount(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount an ext4 image")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    img, mnt = tmp_path / "vault.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    # No journal data copies (data=ordered is the ext4 default), no lazy init noise.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    str(img)], check=True, capture_output=True, timeout=30)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {r.stderr.strip()}")
    return img, mnt


def _umount(mnt) -> None:
    subprocess.run(["umount", str(mnt)], check=True, capture_output=True, timeout=30)


def test_purged_key_bytes_are_not_on_the_raw_ext4_image(tmp_path):
    img, mnt = _loop_mount(tmp_path)
    mounted = True
    try:
        store = DirStore(str(mnt / "vault"))
        eid = uuid.uuid4().hex
        key_bytes = b"FSQK" + os.urandom(144)           # a key object's size, unique bytes
        blob_bytes = b"FSQB" + os.urandom(8192 - 4)
        store.put(f"{eid}.key", key_bytes)
        store.put(f"{eid}.blob", blob_bytes)
        _umount(mnt)                                     # written to the image for sure
        mounted = False
        raw = img.read_bytes()
        assert key_bytes in raw and blob_bytes in raw    # the search finds live data
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True,
                       capture_output=True, timeout=30)
        mounted = True
        store = DirStore(str(mnt / "vault"))
        store.delete(f"{eid}.key")
        store.delete(f"{eid}.blob")
        assert not store.exists(f"{eid}.key") and not store.exists(f"{eid}.blob")
        _umount(mnt)
        mounted = False
        raw = img.read_bytes()
        assert key_bytes not in raw, "the wrapped key survived on the device after purge"
        assert key_bytes[:64] not in raw and key_bytes[-64:] not in raw
        # Control: the unlinked blob's bytes are still there (ext4 does not zero freed
        # blocks), which is exactly why the key, not the blob, is overwritten.
        assert blob_bytes in raw
    finally:
        if mounted:
            _umount(mnt)


def test_overwrite_keeps_the_blocks_and_changes_the_bytes(tmp_path):
    """Without a loop device: the overwrite goes to the same physical extent (filefrag)."""
    if shutil.which("filefrag") is None:
        pytest.skip("filefrag (e2fsprogs) is not installed")
    p = tmp_path / "x.key"
    old = os.urandom(148)
    p.write_bytes(old)
    os.sync()

    def extents() -> list[str]:
        r = subprocess.run(["filefrag", "-v", str(p)], capture_output=True, text=True,
                           timeout=10)
        if r.returncode != 0 or "FIBMAP" in r.stderr or "not supported" in r.stderr:
            pytest.skip(f"filefrag cannot map {p}: {r.stderr.strip()}")
        return [ln.split(":")[2].strip() for ln in r.stdout.splitlines()
                if ln.strip()[:1].isdigit() and ln.count(":") >= 3]

    before = extents()
    overwrite_in_place(str(p))
    assert p.read_bytes() != old and len(p.read_bytes()) == len(old)
    if before:  # tmpfs has no extents; ext4/xfs keep the same physical blocks
        assert extents() == before
    overwrite_in_place(str(tmp_path / "missing.key"))   # a missing file is not an error
