"""Local directory source (pict-rs filesystem store, e.g. /srv/lemmy/volumes/pictrs/files).

Path safety (the invariant this module exists to keep): nothing outside the root is ever read,
written or removed.

* Listing walks with ``os.scandir`` and ``follow_symlinks=False``: a symlink (to a file or a
  directory, inside or outside the root) is *listed* with a skip reason and never followed.
  Other non-regular files (FIFOs, sockets, devices) are listed with a skip reason too.
* Keys coming back from the database or the command line are validated by ``check_key`` and then
  opened component by component relative to an ``O_DIRECTORY`` fd of the root with
  ``O_NOFOLLOW``, so a symlink planted in an intermediate directory after listing cannot redirect
  a read or a remove out of the root (no TOCTOU via path strings).

Hostile names and shapes never stop a pass (invariant 6):

* Names are kept exact: ``os.scandir`` on an fd yields ``str`` names decoded with
  surrogateescape, so a name that is not valid UTF-8 keeps its bytes (``fsq.names``). A name
  ``fsq.names.key_problem`` refuses (not UTF-8, backslash) is listed with that skip reason;
  a directory with such a name is listed once, skipped, and not descended into.
* Depth is bounded: a listing keeps one directory fd open per level, so a tree nested deeper
  than ``MAX_DEPTH`` levels (pict-rs nests 3-4) is listed as one skipped entry per too-deep
  directory instead of exhausting file descriptors. Every key read is resolved with at most two
  fds open at a time, whatever its depth.
* A file that changes while it is read (size or mtime differ before and after) is an
  ``ObjectError`` on that object, retried next pass, not a failed pass.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Generator, Iterator
from urllib.parse import unquote, urlsplit

from fsq.errors import SourceError, UsageError
from fsq.names import key_problem
from fsq.sources.base import (ObjectChanged, ObjectError, ObjectInfo, ObjectMissing, Source,
                              check_key)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

#: Deepest directory level listed (the root's entries are level 1). pict-rs uses 3-4 levels.
MAX_DEPTH = 64


class LocalSource(Source):
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(os.path.abspath(root))
        if not self.root.is_dir():
            raise SourceError(f"source directory {self.root} does not exist or is not a "
                              "directory; check --source / FSQ_SOURCE")
        self.url = "file://" + str(self.root)

    @classmethod
    def from_url(cls, url: str) -> "LocalSource":
        if url.startswith("file://"):
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                # file://./x is accepted as a relative path for convenience
                path = parts.netloc + unquote(parts.path)
            else:
                path = unquote(parts.path)
        else:
            path = url
        if not path:
            raise UsageError(f"source URL {url!r} has no path")
        return cls(path)

    # -- listing ---------------------------------------------------------------------------

    def list(self) -> Iterator[ObjectInfo]:
        # Depth-first, each directory opened relative to its parent's fd with O_NOFOLLOW (no
        # path walk from the root per directory, and a directory swapped for a symlink after
        # it was listed is never followed). Order: a directory's files in name order, then its
        # subdirectories in reverse name order. Open fds = depth of the tree.
        try:
            root_fd = os.open(self.root, _DIR_FLAGS)
        except PermissionError:
            yield ObjectInfo(".", 0, 0.0, "directory not readable (permission)")
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SourceError(f"cannot list {self.root}: {exc.strerror}") from None
        # (fd, key of the directory, subdirectories still to visit: popped from the end)
        stack: list[tuple[int, str, list[str]]] = [(root_fd, "", [])]
        try:
            stack[0][2].extend((yield from self._list_dir(root_fd, "")))
            while stack:
                parent_fd, parent_rel, pending = stack[-1]
                if not pending:
                    stack.pop()
                    os.close(parent_fd)
                    continue
                name = pending.pop()
                rel = f"{parent_rel}/{name}" if parent_rel else name
                if len(stack) >= MAX_DEPTH:
                    # One fd per open level: refuse to go deeper rather than run out of fds.
                    yield ObjectInfo(rel, 0, 0.0, f"directory nested deeper than {MAX_DEPTH} "
                                     "levels; not descended into")
                    continue
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                except PermissionError:
                    yield ObjectInfo(rel, 0, 0.0, "directory not readable (permission)")
                    continue
                except (FileNotFoundError, NotADirectoryError):
                    continue  # removed (or replaced by a file) while we walked
                except OSError as exc:
                    if exc.errno == errno.ELOOP:  # replaced by a symlink while we walked
                        yield ObjectInfo(rel, 0, 0.0, "symlink (never followed)")
                        continue
                    raise SourceError(f"cannot list {os.path.join(self.root, rel)}: "
                                      f"{exc.strerror}") from None
                stack.append((fd, rel, []))
                stack[-1][2].extend((yield from self._list_dir(fd, rel)))
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    def _list_dir(self, fd: int, rel_dir: str) -> Generator[ObjectInfo, None, list[str]]:
        """Yield the non-directory entries of the open directory ``fd`` in name order; return
        its subdirectory names in name order. Directories are recognised from the entry type
        (no stat); every other entry is stat'ed without following symlinks."""
        try:
            with os.scandir(fd) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            yield ObjectInfo(rel_dir or ".", 0, 0.0, "directory not readable (permission)")
            return []
        except OSError as exc:
            shown = os.path.join(self.root, rel_dir) if rel_dir else str(self.root)
            raise SourceError(f"cannot list {shown}: {exc.strerror}") from None
        subdirs: list[str] = []
        for e in entries:
            key = f"{rel_dir}/{e.name}" if rel_dir else e.name
            problem = key_problem(key)
            try:
                if e.is_dir(follow_symlinks=False):
                    if problem is not None:
                        yield ObjectInfo(key, 0, 0.0, "directory " + problem.replace(
                            "; never read", "; not descended into"))
                    else:
                        subdirs.append(e.name)
                    continue
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                yield ObjectInfo(key, 0, 0.0, f"cannot stat: {exc.strerror}")
                continue
            if problem is not None:
                yield ObjectInfo(key, st.st_size, st.st_mtime, problem)
            elif stat.S_ISREG(st.st_mode):
                yield ObjectInfo(key, st.st_size, st.st_mtime)
            elif stat.S_ISDIR(st.st_mode):
                subdirs.append(e.name)  # became a directory since readdir
            elif stat.S_ISLNK(st.st_mode):
                yield ObjectInfo(key, 0, st.st_mtime, "symlink (never followed)")
            else:
                yield ObjectInfo(key, 0, st.st_mtime, "not a regular file")
        return subdirs

    # -- safe path resolution -------------------------------------------------------------------

    def _open_parent(self, key: str, create: bool = False) -> tuple[int, str]:
        """fd of the directory holding ``key`` (walked with O_NOFOLLOW) and the last name."""
        check_key(key)
        parts = key.split("/")
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise SourceError(f"cannot open source root {self.root}: {exc.strerror}") from None
        try:
            for seg in parts[:-1]:
                try:
                    nfd = os.open(seg, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise ObjectMissing(key) from None
                    try:
                        os.mkdir(seg, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    nfd = os.open(seg, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise ObjectError(key, "path goes through a symlink or non-directory; "
                                               "refusing") from None
                    raise ObjectError(key, exc.strerror or str(exc)) from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def stat(self, key: str) -> ObjectInfo:
        dfd, name = self._open_parent(key)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        except OSError as exc:
            raise ObjectError(key, exc.strerror or str(exc)) from None
        finally:
            os.close(dfd)
        if stat.S_ISLNK(st.st_mode):
            return ObjectInfo(key, 0, st.st_mtime, "symlink (never followed)")
        if not stat.S_ISREG(st.st_mode):
            return ObjectInfo(key, 0, st.st_mtime, "not a regular file")
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def read(self, key: str, max_bytes: int | None = None) -> bytes:
        dfd, name = self._open_parent(key)
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | getattr(os, "O_CLOEXEC", 0), dir_fd=dfd)
            except FileNotFoundError:
                raise ObjectMissing(key) from None
            except PermissionError:
                raise ObjectError(key, "permission denied") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ObjectError(key, "is a symlink; refusing to follow") from None
                raise ObjectError(key, exc.strerror or str(exc)) from None
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ObjectError(key, "not a regular file")
            if max_bytes is not None and st.st_size > max_bytes:
                raise ObjectError(key, f"too large ({st.st_size} bytes > {max_bytes})")
            chunks = []
            total = 0
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                total += len(b)
                if max_bytes is not None and total > max_bytes:
                    raise ObjectError(key, f"too large (grew past {max_bytes} bytes)")
                chunks.append(b)
            after = os.fstat(fd)
            if (total != after.st_size or after.st_size != st.st_size
                    or after.st_mtime_ns != st.st_mtime_ns):
                # Being written right now (or rewritten): these bytes may be a mix of two
                # versions. An error on this object; the next pass reads it again.
                raise ObjectChanged(key, "changed while it was being read; retried next pass")
            return b"".join(chunks)
        except OSError as exc:
            raise ObjectError(key, exc.strerror or str(exc)) from None
        finally:
            os.close(fd)

    def remove(self, key: str) -> None:
        try:
            dfd, name = self._open_parent(key)
        except ObjectMissing:
            return
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise ObjectError(key, "not a regular file; refusing to remove")
            os.unlink(name, dir_fd=dfd)
            os.fsync(dfd)  # the unlink is durable before we record "source removed"
        except FileNotFoundError:
            return
        except PermissionError:
            raise ObjectError(key, "permission denied removing the file") from None
        finally:
            os.close(dfd)

    def write(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        dfd, name = self._open_parent(key, create=True)
        tmp = f".{name}.fsq-tmp-{os.getpid()}"
        try:
            if not overwrite:
                try:
                    os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    raise ObjectError(key, "something already exists at this key")
                except FileNotFoundError:
                    pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                         dir_fd=dfd)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                # link() fails if the name appeared meanwhile: no silent overwrite
                try:
                    os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                except FileExistsError:
                    raise ObjectError(key, "something already exists at this key") from None
                finally:
                    os.unlink(tmp, dir_fd=dfd)
            os.fsync(dfd)
        except OSError as exc:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise ObjectError(key, exc.strerror or str(exc)) from None
        finally:
            os.close(dfd)
