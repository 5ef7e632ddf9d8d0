"""DirStore: the vault as a local directory (``FSQ_VAULT=file://PATH``).

Layout: flat. Every object is one file directly under the root, named exactly as the caller
named it (``<32 hex>.blob`` / ``<32 hex>.key``); nothing else is ever created there except
short-lived temp files ``.tmp-<16 hex>``. A Lemmy instance quarantines hundreds or thousands of
entries, not millions, which any modern filesystem lists quickly in one directory; flat keeps
``names()``, backups and manual inspection simple.

Permissions: root 0700 (created so; an existing root that group or others can enter is
tightened, with a warning), objects 0600.

Crash safety (the invariant ``put`` promises): the data goes to a fresh temp file (O_EXCL,
O_NOFOLLOW), is fsync'ed, then hard-linked to its final name - ``link`` fails if the name
exists, so an existing object is never overwritten, not even by a racing writer - and the
directory is fsync'ed so the new name survives a power cut. A crash before the link leaves only
a temp file (``names()`` ignores it, ``cleanup_temp()`` removes it); a crash after it leaves a
complete object plus a temp name for the same inode, which ``cleanup_temp()`` also removes.
On filesystems without hard links, ``put`` falls back to check-then-rename, which is atomic
but would lose a race between two writers of the same name (entry ids are random, so two
writers never share a name in practice).

Names are validated against a strict pattern before any path is built, so no caller can reach
outside the root (``../x``, ``a/b``, absolute paths, NUL bytes all fail).

The small file helpers (``write_new_file``, ``replace_file``, ``fsync_dir``) are also used by
``fsq.quarantine.keys`` for the key files.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
import time
from typing import Iterator

from fsq.errors import UsageError, VaultError
from fsq.quarantine.store import VaultMissing, VaultStore
from fsq.testonly import crash_point

log = logging.getLogger(__name__)

#: Object names the vault accepts: an entry id (32 lowercase hex) and the object kind.
NAME_RE = re.compile(r"[0-9a-f]{32}\.(?:blob|key)")
TEMP_PREFIX = ".tmp-"
_TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{16}")

_NO_HARDLINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS,
                       errno.EMLINK, errno.EXDEV}


def overwrite_in_place(path: str) -> None:
    """Overwrite a file's bytes with random data and fsync, before it is unlinked.

    Crypto-shredding rests on the wrapped data key being gone; a plain ``unlink`` only drops
    the name, and on ext4/xfs the key's blocks keep the old bytes until reused. Writing random
    bytes over the same length through the same open file (no truncate, no O_TRUNC: that would
    free the blocks instead of rewriting them) and fsyncing makes an in-place filesystem store
    the random bytes in the key's former blocks.

    Best effort, and the limits are real (docs/threat-model.md): SSDs remap writes (the old
    flash page survives until garbage-collected), copy-on-write filesystems (btrfs, ZFS) and
    snapshots (LVM, ZFS, VM images) write the random bytes elsewhere and keep the old block, and
    ext4 ``data=journal`` keeps a copy in the journal. Use an encrypted filesystem, or the S3
    vault with versioned deletes, where that matters. A missing file is not an error.
    """
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        done = 0
        while done < size:
            chunk = os.urandom(min(size - done, 1 << 16))
            done += os.pwrite(fd, chunk, done)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid vault object name, else raise ``UsageError``."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsageError(f"invalid vault object name {name!r}: expected <32 hex digits>.blob "
                         "or <32 hex digits>.key")
    return name


# --- file helpers ------------------------------------------------------------------------------

def fsync_dir(path: str) -> None:
    """fsync a directory so that names created or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        # A few filesystems (some network/FUSE ones) cannot fsync a directory; the file data
        # itself was already fsync'ed, so this is the best they offer.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_temp(directory: str, data: bytes | bytearray | memoryview, mode: int) -> str:
    """Write ``data`` to a new temp file in ``directory``, fsync'ed; return its path."""
    path = os.path.join(directory, TEMP_PREFIX + secrets.token_hex(8))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask did
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)
    return path


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_new_file(path: str, data: bytes | bytearray | memoryview, mode: int = 0o600,
                   *, crash_name: str | None = None) -> None:
    """Atomically and durably create ``path`` with ``data``; never overwrite.

    Raises ``FileExistsError`` if ``path`` exists (the file is left untouched) and ``OSError``
    for other failures (no partial file is left under ``path``). ``crash_name`` names a
    test-only crash point between the fsync'ed temp file and the link.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _write_temp(directory, data, mode)
    try:
        if crash_name:
            crash_point(crash_name)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError as e:
            if e.errno not in _NO_HARDLINK_ERRNOS:
                raise
            # No hard links here: check-then-rename (see the module docstring).
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "File exists", path) from None
            os.rename(tmp, path)
    finally:
        _unlink_quietly(tmp)  # after a link both names share the inode; drop the temp one
    fsync_dir(directory)


def replace_file(path: str, data: bytes | bytearray | memoryview, mode: int = 0o600) -> None:
    """Atomically and durably replace (or create) ``path`` with ``data``."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _write_temp(directory, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(directory)


def _oserror_text(e: OSError) -> str:
    return e.strerror or str(e)


# --- the store ---------------------------------------------------------------------------------

class DirStore(VaultStore):
    """Vault objects as files in one directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.url = "file://" + self.root
        self._prepare_root()

    @classmethod
    def from_url(cls, url: str) -> "DirStore":
        """``file:///abs/path``, ``file://./rel/path`` (against the working directory), or a
        bare path."""
        if "://" in url:
            scheme, path = url.split("://", 1)
            if scheme.lower() != "file":
                raise UsageError(f"DirStore needs a file:// URL, not {scheme}://")
        else:
            path = url
        if not path:
            raise UsageError(f"vault URL {url!r} has no path; use e.g. file://./quarantine")
        return cls(path)

    def __repr__(self) -> str:
        return f"DirStore({self.url!r})"

    def _prepare_root(self) -> None:
        root = self.root
        try:
            st = os.stat(root)
        except FileNotFoundError:
            try:
                os.makedirs(root, mode=0o700)  # the mode applies to the last component
                os.chmod(root, 0o700)
                fsync_dir(os.path.dirname(root))
            except OSError as e:
                raise VaultError(f"cannot create vault directory {root}: {_oserror_text(e)}; "
                                 "check FSQ_VAULT and the permissions of its parent") from None
            return
        except OSError as e:
            raise VaultError(f"cannot access vault directory {root}: {_oserror_text(e)}") \
                from None
        if not stat.S_ISDIR(st.st_mode):
            raise VaultError(f"vault path {root} exists but is not a directory; check FSQ_VAULT")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            try:
                os.chmod(root, mode & 0o700)
                log.warning("vault directory %s was accessible to group/others (mode %03o); "
                            "tightened it to %03o", root, mode, mode & 0o700)
            except OSError:
                log.warning("vault directory %s is accessible to group/others (mode %03o) and "
                            "fsq cannot change that; run `chmod 700 %s`", root, mode, root)

    def _path(self, name: str) -> str:
        return os.path.join(self.root, check_name(name))

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            write_new_file(path, data, 0o600, crash_name="dirstore-put-before-link")
        except FileExistsError:
            raise VaultError(f"vault object {name} already exists in {self.url}; "
                             "refusing to overwrite it") from None
        except OSError as e:
            raise VaultError(f"cannot write vault object {name} to {self.url}: "
                             f"{_oserror_text(e)}") from None

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VaultMissing(f"vault object {name} does not exist in {self.url}") from None
        except OSError as e:
            raise VaultError(f"cannot read vault object {name} from {self.url}: "
                             f"{_oserror_text(e)}") from None
        try:
            with os.fdopen(fd, "rb") as f:
                return f.read()
        except OSError as e:
            raise VaultError(f"cannot read vault object {name} from {self.url}: "
                             f"{_oserror_text(e)}") from None

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            if name.endswith(".key"):
                overwrite_in_place(path)
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise VaultError(f"cannot delete vault object {name} from {self.url}: "
                             f"{_oserror_text(e)}") from None
        try:
            fsync_dir(self.root)
        except OSError as e:
            raise VaultError(f"cannot sync vault directory {self.root}: {_oserror_text(e)}") \
                from None

    def exists(self, name: str) -> bool:
        path = self._path(name)
        try:
            os.lstat(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise VaultError(f"cannot check vault object {name} in {self.url}: "
                             f"{_oserror_text(e)}") from None
        return True

    def names(self) -> Iterator[str]:
        """Final object names, sorted; temp files and anything foreign are skipped."""
        try:
            with os.scandir(self.root) as it:
                found = sorted(e.name for e in it
                               if NAME_RE.fullmatch(e.name) and e.is_file(follow_symlinks=False))
        except OSError as e:
            raise VaultError(f"cannot list vault directory {self.root}: {_oserror_text(e)}") \
                from None
        return iter(found)

    def cleanup_temp(self, min_age_seconds: float = 0.0) -> list[str]:
        """Remove temp files left by interrupted ``put`` calls; return their names.

        A temp file is never a complete object under its final name, so removing it loses
        nothing. If another fsq process may be writing right now, pass a ``min_age_seconds``
        (e.g. 3600) so its in-flight temp file is spared; otherwise its ``put`` fails cleanly.
        """
        removed: list[str] = []
        now = time.time()
        try:
            with os.scandir(self.root) as it:
                for e in it:
                    if not _TEMP_RE.fullmatch(e.name) or not e.is_file(follow_symlinks=False):
                        continue
                    if min_age_seconds and now - e.stat(follow_symlinks=False).st_mtime \
                            < min_age_seconds:
                        continue
                    try:
                        os.unlink(e.path)
                    except FileNotFoundError:
                        continue
                    removed.append(e.name)
            if removed:
                fsync_dir(self.root)
        except OSError as e:
            raise VaultError(f"cannot clean temp files in {self.root}: {_oserror_text(e)}") \
                from None
        return sorted(removed)
