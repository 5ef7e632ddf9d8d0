"""SFTP source: a pict-rs filesystem store on another machine
(``--source sftp://user@host:port/path``), over paramiko.

Authentication is by key only: ``FSQ_SFTP_KEY_FILE`` (Ed25519, ECDSA or RSA, OpenSSH or PEM
format). An encrypted key takes its passphrase from ``FSQ_SFTP_KEY_PASSPHRASE`` or, on a
terminal, a prompt. Passwords and the ssh-agent are never used: an agent may hold keys for
other machines, and a scheduled scan must not depend on a desktop session's agent.

Host keys are checked against ``FSQ_SFTP_KNOWN_HOSTS`` (default ``~/.ssh/known_hosts``), as
OpenSSH does:

* an unknown host is refused (``ConfigError``, exit 2: the fix is a setting) with the key's
  SHA256 fingerprint to verify; ``--accept-new-host-key`` / ``FSQ_SFTP_ACCEPT_NEW_HOST_KEY``
  accepts it once and appends it to the known_hosts file;
* a changed key - or a new key type for a host already known - is always refused, even with
  that flag (``IntegrityError``, exit 4): it is either an attack or a reinstalled server that a
  person must confirm by editing known_hosts. Exit 4 rather than 3 so that a wrapper or the
  daemon that retries on "service failed" does not treat a possible MITM as an outage.

One persistent SSH connection; each thread that uses the source gets its own SFTP channel on
it (paramiko's SFTPClient is not meant for concurrent use, and separate channels let the
pipeline's fetch workers overlap their round trips). A dropped connection is reopened with
bounded retries and backoff (3 attempts); after that the call raises ``SourceError`` (exit 3).
Each operation is safe to repeat after a reconnect (``write`` recognises its own earlier,
completed attempt).

Path safety: nothing outside the root is read, written or removed.

* Listing uses READDIR attributes, which OpenSSH's sftp-server takes with ``lstat``: symlinks
  and other non-regular entries are listed with a skip reason and never followed.
* Names are read as bytes (``_listdir_raw``; paramiko's own listing decodes them strictly and
  one non-UTF-8 name would fail the whole directory) and decoded with surrogateescape, as
  ``os.fsdecode`` does locally; names ``fsq.names.key_problem`` refuses are listed skipped
  with the reason (and the bytes), and the rest of the directory is listed as usual.
* Before reading, stat'ing, removing or writing a key, fsq asks the server for the real path
  (SSH_FXP_REALPATH) of the key and requires it to equal ``<real root>/<key>``: a symlink in
  *any* component (an intermediate directory or the file itself) changes the real path and the
  call is refused. The final component is also ``lstat``-ed and must be a regular file.
  SFTP has no ``openat``/``O_NOFOLLOW``, so a process on the server that swaps a directory for a
  symlink between that check and the open can still win the race; that needs write access to
  the pict-rs store on the server itself.
* Removal happens on the server (SFTP REMOVE), never on a local path.
* ``write`` uploads to a temporary name in the same remote directory and renames it: SFTP RENAME,
  which OpenSSH implements with ``link``+``unlink``, so it fails instead of overwriting an
  existing file; ``overwrite=True`` uses posix-rename@openssh.com. paramiko has no
  fsync@openssh.com, so durability after a power cut of the *server* is the server's page cache.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import posixpath
import secrets
import socket
import stat
import sys
import threading
import time
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit

from fsq.errors import ConfigError, IntegrityError, SourceError, UsageError
from fsq.names import key_problem
from fsq.sources.base import ObjectError, ObjectInfo, ObjectMissing, Source, check_key

try:
    import paramiko
except ImportError:  # pragma: no cover - depends on the install
    paramiko = None  # type: ignore[assignment]

log = logging.getLogger("fsq.sftp")


def _quiet_paramiko() -> None:
    """fsq reports connection failures itself, in one line (ARCHITECTURE.md). paramiko would
    also log "Socket exception: ..." at ERROR, and its read-ahead ("prefetch") thread dies
    with a traceback when the connection drops under it; silence exactly those two."""
    plog = logging.getLogger("paramiko")
    if plog.level == logging.NOTSET:  # an explicit level set by someone else wins
        plog.setLevel(logging.CRITICAL)
    previous = threading.excepthook
    if getattr(previous, "_fsq_sftp", False):
        return

    def hook(args: Any) -> None:
        name = getattr(args.thread, "name", "") or ""
        if name.endswith("(_prefetch_thread)") and isinstance(
                args.exc_value, (EOFError, OSError, paramiko.SSHException)):
            log.debug("SFTP read-ahead stopped: %s", args.exc_type.__name__)
            return
        previous(args)

    hook._fsq_sftp = True  # type: ignore[attr-defined]
    threading.excepthook = hook

Prompt = Callable[[str], str]

#: Connection attempts per operation before giving up with SourceError.
DEFAULT_ATTEMPTS = 3
#: First backoff delay in seconds; doubles each attempt.
DEFAULT_BACKOFF = 0.5
#: TCP connect / banner / auth timeout in seconds.
DEFAULT_TIMEOUT = 10.0
#: Seconds without an answer on an SFTP channel before the connection counts as lost (a hung
#: server must not hang the scan; the operation is then retried on a new connection).
CHANNEL_TIMEOUT = 60.0


def _need_paramiko() -> None:
    if paramiko is None:  # pragma: no cover
        raise ConfigError("SFTP support needs paramiko: pip install 'fsq[sftp]'")


def fingerprint(key: Any) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a paramiko public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def load_private_key(path: str | None, passphrase: str | None,
                     prompt: Prompt | None = None) -> Any:
    """Load an Ed25519/ECDSA/RSA private key; every failure is a ConfigError without secrets."""
    _need_paramiko()
    if not path:
        raise ConfigError("SFTP needs a private key: set FSQ_SFTP_KEY_FILE (Ed25519, ECDSA or "
                          "RSA); password and agent authentication are not used")
    full = os.path.expanduser(path)
    if not os.path.isfile(full):
        raise ConfigError(f"SSH key file {full} does not exist or is not a file; "
                          "check FSQ_SFTP_KEY_FILE")
    if not os.access(full, os.R_OK):
        raise ConfigError(f"SSH key file {full} is not readable; check its permissions")

    def attempt(pw: str | None) -> Any:
        return paramiko.PKey.from_path(full, pw.encode("utf-8") if pw is not None else None)

    try:
        return attempt(passphrase)
    except TypeError:
        # cryptography: "Password was not given but private key is encrypted", or
        # "Password was given but private key is not encrypted": then the passphrase is moot.
        if passphrase is not None:
            return load_private_key(path, None, None)
    except paramiko.UnknownKeyType:
        raise ConfigError(f"SSH key {full} has an unsupported type; use Ed25519, ECDSA or "
                          "RSA") from None
    except (ValueError, paramiko.SSHException):
        if passphrase is not None and _looks_encrypted(full):
            raise ConfigError(f"wrong passphrase for SSH key {full} "
                              "(FSQ_SFTP_KEY_PASSPHRASE)") from None
        raise ConfigError(f"cannot load SSH key {full}: not an OpenSSH/PEM private key "
                          "(Ed25519, ECDSA or RSA)") from None
    # Encrypted and no passphrase given.
    if prompt is None and sys.stdin is not None and sys.stdin.isatty():
        prompt = getpass.getpass
    if prompt is None:
        raise ConfigError(f"SSH key {full} is encrypted: set FSQ_SFTP_KEY_PASSPHRASE or run on "
                          "a terminal to be asked for the passphrase")
    pw = prompt(f"Passphrase for SSH key {full}: ")
    try:
        return attempt(pw)
    except (TypeError, ValueError, paramiko.SSHException):
        raise ConfigError(f"wrong passphrase for SSH key {full}") from None


def _looks_encrypted(path: str) -> bool:
    """True for an encrypted OpenSSH or PEM private key file (without decrypting it)."""
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 16)
    except OSError:
        return False
    if b"ENCRYPTED" in text:  # PEM: "Proc-Type: 4,ENCRYPTED" / "ENCRYPTED PRIVATE KEY"
        return True
    if b"BEGIN OPENSSH PRIVATE KEY" in text:
        body = b"".join(line.strip() for line in text.splitlines()
                        if line.strip() and not line.startswith(b"-----"))
        try:
            raw = base64.b64decode(body[:200] + b"=" * (-len(body[:200]) % 4))
        except ValueError:
            return False
        # "openssh-key-v1\0", then the cipher name as an SSH string: "none" = unencrypted
        return raw.startswith(b"openssh-key-v1\x00") and raw[19:23] != b"none"
    return False


class _UnknownHostKey(Exception):
    def __init__(self, hostname: str, key: Any) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


class _OtherKeyType(Exception):
    def __init__(self, hostname: str, key: Any, known: list[str]) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key
        self.known = known


class _HostKeyPolicy:
    """paramiko calls ``missing_host_key`` when no key *of the offered type* is known."""

    def __init__(self, known_hosts: str, accept_new: bool) -> None:
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        known = client.get_host_keys().get(hostname)
        if known:
            # The host is known under another key type: a key change in disguise.
            raise _OtherKeyType(hostname, key, sorted(known.keys()))
        if not self.accept_new:
            raise _UnknownHostKey(hostname, key)
        _append_known_host(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


def _append_known_host(path: str, hostname: str, key: Any) -> None:
    """Append one line, leaving the rest of the file (comments, hashed hosts) untouched."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as f:
            if f.tell() > 0:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write("\n")
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot record the new host key in {path}: "
                          f"{exc.strerror or exc}") from None


class SFTPSource(Source):
    """See the module docstring."""

    def __init__(self, host: str, port: int, user: str, root: str, settings: Any, *,
                 prompt: Prompt | None = None, attempts: int = DEFAULT_ATTEMPTS,
                 backoff: float = DEFAULT_BACKOFF, timeout: float = DEFAULT_TIMEOUT) -> None:
        _need_paramiko()
        _quiet_paramiko()
        if not root.startswith("/"):
            raise UsageError(f"SFTP source path {root!r} must be absolute, e.g. "
                             "sftp://user@host/srv/pictrs/files")
        self.host = host
        self.port = port
        self.user = user
        self.root = posixpath.normpath(root)
        self.url = f"sftp://{user}@{host}:{port}{self.root}"
        self.known_hosts = os.path.expanduser(getattr(settings, "sftp_known_hosts", None)
                                              or "~/.ssh/known_hosts")
        self.accept_new = bool(getattr(settings, "sftp_accept_new_host_key", False))
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.timeout = timeout
        self._pkey = load_private_key(getattr(settings, "sftp_key_file", None),
                                      getattr(settings, "sftp_key_passphrase", None), prompt)
        self._lock = threading.RLock()  # guards the connection and the channel table
        self._ssh: Any = None
        self._gen = 0                    # bumped on every (re)connect
        self._channels: dict[int, tuple[int, Any]] = {}  # thread id -> (gen, SFTPClient)
        self._real_root: str | None = None
        self.reconnects = 0  # how many times a lost connection was reopened (for tests/logs)
        self._op(lambda sftp: None)  # connect now: host key and auth problems show up early

    @classmethod
    def from_url(cls, url: str, settings: Any, prompt: Prompt | None = None) -> "SFTPSource":
        parts = urlsplit(url)
        if parts.scheme.lower() != "sftp" or not parts.hostname:
            raise UsageError(f"SFTP source URL {url!r} must look like "
                             "sftp://user@host:port/path")
        if parts.password is not None:
            raise UsageError("SFTP source URL must not contain a password; fsq uses key "
                             "authentication (FSQ_SFTP_KEY_FILE)")
        try:
            port = parts.port or 22
        except ValueError:
            raise UsageError(f"SFTP source URL {url!r} has an invalid port") from None
        user = unquote(parts.username) if parts.username else getpass.getuser()
        path = unquote(parts.path)
        if not path or path == "/":
            raise UsageError(f"SFTP source URL {url!r} has no path; give the pict-rs files "
                             "directory, e.g. sftp://user@host/srv/lemmy/volumes/pictrs/files")
        return cls(parts.hostname, port, user, path, settings, prompt=prompt)

    # -- connection ----------------------------------------------------------------------------

    def _connect(self) -> None:
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(self.known_hosts)
        except FileNotFoundError:
            pass  # no file yet: every host is unknown
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise ConfigError(f"cannot read known_hosts file {self.known_hosts}: "
                              f"{exc.__class__.__name__}; check FSQ_SFTP_KNOWN_HOSTS") from None
        client.set_missing_host_key_policy(_HostKeyPolicy(self.known_hosts, self.accept_new))
        name = known_hosts_name(self.host, self.port)
        try:
            client.connect(self.host, self.port, username=self.user, pkey=self._pkey,
                           allow_agent=False, look_for_keys=False, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout)
        except _UnknownHostKey as exc:
            client.close()
            raise ConfigError(
                f"host key of {name} is not in {self.known_hosts}; verify its fingerprint "
                f"{exc.key.get_name()} {fingerprint(exc.key)} with the server's admin and rerun "
                "with --accept-new-host-key (FSQ_SFTP_ACCEPT_NEW_HOST_KEY=true)") from None
        except _OtherKeyType as exc:
            client.close()
            raise IntegrityError(
                f"HOST KEY OF {name} CHANGED: {self.known_hosts} has a {', '.join(exc.known)} "
                f"key for it but the server offered {exc.key.get_name()} "
                f"{fingerprint(exc.key)}; this may be an attack, refusing to connect. If the "
                f"server was really reinstalled, remove its line from {self.known_hosts} "
                "(ssh-keygen -R) and verify the new key") from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise IntegrityError(
                f"HOST KEY OF {name} CHANGED: the server offered {exc.key.get_name()} "
                f"{fingerprint(exc.key)} but {self.known_hosts} expects "
                f"{fingerprint(exc.expected_key)}; this may be an attack, refusing to connect. "
                f"If the server was really reinstalled, remove its line from "
                f"{self.known_hosts} (ssh-keygen -R) and verify the new key") from None
        except paramiko.AuthenticationException:
            client.close()
            raise ConfigError(f"{name} refused the SSH key {self._pkey.get_name()} "
                              f"{fingerprint(self._pkey)} for user {self.user!r}; add its public "
                              "key to that user's authorized_keys or fix FSQ_SFTP_KEY_FILE") \
                from None
        except BaseException:
            client.close()
            raise
        try:
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(CHANNEL_TIMEOUT)
        except BaseException:
            client.close()
            raise
        self._ssh = client
        self._gen += 1
        self._channels = {threading.get_ident(): (self._gen, sftp)}
        if self._real_root is None:
            try:
                real = sftp.normalize(self.root)
                st = sftp.stat(real)
            except FileNotFoundError:
                self._drop()
                raise SourceError(f"source directory {self.root} does not exist on "
                                  f"{name}; check --source / FSQ_SOURCE") from None
            except PermissionError:
                self._drop()
                raise SourceError(f"source directory {self.root} on {name} is not "
                                  f"accessible to {self.user!r}") from None
            if not stat.S_ISDIR(st.st_mode or 0):
                self._drop()
                raise SourceError(f"source path {self.root} on {name} is not a directory")
            self._real_root = real.rstrip("/") or "/"

    def _drop(self) -> None:
        ssh, self._ssh, self._channels = self._ssh, None, {}
        if ssh is not None:
            try:
                ssh.close()  # closes every channel with it
            except Exception:  # pragma: no cover - best effort
                pass

    def _alive(self) -> bool:
        t = self._ssh.get_transport() if self._ssh is not None else None
        return bool(t is not None and t.is_active())

    def _channel(self, had_failure: bool) -> tuple[int, Any]:
        """(generation, SFTP channel of the calling thread), connecting if needed.

        One SSH connection, one SFTP channel per thread on it: paramiko's SFTPClient is not
        meant to be shared between threads, and separate channels let the pipeline's workers
        overlap their round trips. Channels of threads that ended are closed here, so a
        daemon with new worker threads each pass stays under sshd's MaxSessions (default 10).
        """
        with self._lock:
            if self._ssh is None or not self._alive():
                if self._ssh is not None or had_failure:
                    self.reconnects += 1
                self._drop()
                self._connect()
            me = threading.get_ident()
            mine = self._channels.get(me)
            if mine is not None and mine[0] == self._gen:
                return mine
            living = {t.ident for t in threading.enumerate()}
            for tid in [t for t in self._channels if t not in living]:
                try:
                    self._channels.pop(tid)[1].close()
                except Exception:  # pragma: no cover - best effort
                    pass
            try:
                sftp = self._ssh.open_sftp()
                sftp.get_channel().settimeout(CHANNEL_TIMEOUT)
            except paramiko.ChannelException:
                raise SourceError(
                    f"SFTP server {known_hosts_name(self.host, self.port)} refused another "
                    f"session ({len(self._channels)} open); lower FSQ_WORKERS or raise "
                    "MaxSessions in its sshd_config") from None
            self._channels[me] = (self._gen, sftp)
            return self._channels[me]

    @staticmethod
    def _answers(sftp: Any) -> bool:
        """True if the server still answers on this channel (one round trip)."""
        try:
            sftp.normalize(".")
            return True
        except Exception:
            return False

    def _lost(self, gen: int) -> None:
        """The connection of generation ``gen`` failed: drop it unless already replaced."""
        with self._lock:
            if self._gen == gen:
                self._drop()

    def _op(self, fn: Callable[[Any], Any], key: str | None = None) -> Any:
        """Run ``fn(sftp)`` on this thread's channel, reconnecting on connection loss
        (bounded attempts with backoff). ``fn`` must be safe to repeat."""
        last: BaseException | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * (2 ** (attempt - 1)))
            gen, sftp = -1, None
            try:
                gen, sftp = self._channel(last is not None)
                return fn(sftp)
            except (ConfigError, IntegrityError, SourceError, ObjectError, UsageError):
                raise
            except (EOFError, socket.timeout, paramiko.SSHException,
                    paramiko.sftp.SFTPError) as exc:
                last = exc
                self._lost(gen)
            except OSError as exc:
                # File-level errors (ENOENT, EACCES, SSH_FX_FAILURE) arrive as OSError too, and
                # so do some connection failures ("Socket is closed"). A file-level error must
                # not be retried, a lost connection must never be recorded against the object
                # (the next scan would take it as done): ask the server to be sure.
                if sftp is not None and not isinstance(exc, ConnectionError) \
                        and self._answers(sftp):
                    if isinstance(exc, FileNotFoundError) and key is not None:
                        raise ObjectMissing(key) from None
                    raise ObjectError(key or "(source)", exc.strerror or str(exc)) from None
                last = exc
                self._lost(gen)
        name = known_hosts_name(self.host, self.port)
        what = last.__class__.__name__ if last is not None else "error"
        raise SourceError(f"SFTP server {name} unreachable or connection lost ({what}) after "
                          f"{self.attempts} attempts; check that sshd is running, then rerun")

    # -- paths ---------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        check_key(key)
        assert self._real_root is not None
        return posixpath.join(self._real_root, key)

    def _check_real(self, sftp: Any, key: str, full: str) -> None:
        """Refuse if any component of ``full`` is a symlink (its real path differs)."""
        try:
            real = sftp.normalize(full)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        if real != full:
            raise ObjectError(key, "path goes through a symlink; refusing")

    def _lstat_regular(self, sftp: Any, key: str, full: str) -> Any:
        try:
            st = sftp.lstat(full)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        mode = st.st_mode or 0
        if stat.S_ISLNK(mode):
            raise ObjectError(key, "is a symlink; refusing to follow")
        if not stat.S_ISREG(mode):
            raise ObjectError(key, "not a regular file")
        return st

    # -- Source --------------------------------------------------------------------------------

    def list(self) -> Iterator[ObjectInfo]:
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            abs_dir = posixpath.join(self._real_root or self.root, rel_dir) if rel_dir \
                else (self._real_root or self.root)
            try:
                entries = self._op(lambda sftp: _listdir_raw(sftp, abs_dir), rel_dir or ".")
            except ObjectMissing:
                if rel_dir:
                    continue  # removed while we walked
                raise SourceError(f"source directory {self.root} vanished") from None
            except ObjectError as exc:
                if not rel_dir:
                    raise SourceError(f"cannot list {self.url}: {exc.reason}") from None
                yield ObjectInfo(rel_dir, 0, 0.0, f"directory not readable ({exc.reason})")
                continue
            for e in sorted(entries, key=lambda a: a.filename):
                if e.filename in (".", ".."):
                    continue
                key = f"{rel_dir}/{e.filename}" if rel_dir else e.filename
                mode = e.st_mode or 0
                mtime = float(e.st_mtime or 0)
                problem = key_problem(key)
                if problem is not None:
                    if stat.S_ISDIR(mode):
                        problem = "directory " + problem.replace("; never read",
                                                                 "; not descended into")
                    yield ObjectInfo(key, 0, mtime, problem)
                    continue
                if stat.S_ISDIR(mode):
                    stack.append(key)
                elif stat.S_ISREG(mode):
                    yield ObjectInfo(key, int(e.st_size or 0), mtime)
                elif stat.S_ISLNK(mode):
                    yield ObjectInfo(key, 0, mtime, "symlink (never followed)")
                else:
                    yield ObjectInfo(key, 0, mtime, "not a regular file")

    def stat(self, key: str) -> ObjectInfo:
        def run(sftp: Any) -> ObjectInfo:
            full = self._full(key)
            try:
                st = sftp.lstat(full)
            except FileNotFoundError:
                raise ObjectMissing(key) from None
            mode = st.st_mode or 0
            mtime = float(st.st_mtime or 0)
            if stat.S_ISLNK(mode):
                # Only the directories above it must be real; the link itself is reported.
                parent = posixpath.dirname(full)
                if sftp.normalize(parent) != parent:
                    raise ObjectError(key, "path goes through a symlink; refusing")
                return ObjectInfo(key, 0, mtime, "symlink (never followed)")
            self._check_real(sftp, key, full)
            if not stat.S_ISREG(mode):
                return ObjectInfo(key, 0, mtime, "not a regular file")
            return ObjectInfo(key, int(st.st_size or 0), mtime)

        return self._op(run, key)

    def read(self, key: str, max_bytes: int | None = None) -> bytes:
        def run(sftp: Any) -> bytes:
            full = self._full(key)
            st = self._lstat_regular(sftp, key, full)
            self._check_real(sftp, key, full)
            size = int(st.st_size or 0)
            if max_bytes is not None and size > max_bytes:
                raise ObjectError(key, f"too large ({size} bytes > {max_bytes})")
            try:
                f = sftp.open(full, "rb")
            except FileNotFoundError:
                raise ObjectMissing(key) from None
            with f:
                fst = f.stat()
                if not stat.S_ISREG(fst.st_mode or 0):
                    raise ObjectError(key, "not a regular file")
                fsize = int(fst.st_size or 0)
                if max_bytes is not None and fsize > max_bytes:
                    raise ObjectError(key, f"too large ({fsize} bytes > {max_bytes})")
                f.prefetch(fsize)
                limit = fsize if max_bytes is None else max_bytes + 1
                data = f.read(limit)
                if max_bytes is not None and len(data) > max_bytes:
                    raise ObjectError(key, f"too large (grew past {max_bytes} bytes)")
                if len(data) < fsize:
                    raise ObjectError(key, f"short read ({len(data)} of {fsize} bytes)")
                if len(data) == fsize and max_bytes is None:
                    # Grown since fstat: read the rest rather than return a truncated file.
                    rest = f.read()
                    if rest:
                        data += rest
                return data

        return self._op(run, key)

    def remove(self, key: str) -> None:
        def run(sftp: Any) -> None:
            full = self._full(key)
            try:
                self._lstat_regular(sftp, key, full)
                self._check_real(sftp, key, full)
            except ObjectMissing:
                return
            except ObjectError as exc:
                raise ObjectError(key, f"{exc.reason}; refusing to remove") from None
            try:
                sftp.remove(full)
            except FileNotFoundError:
                return

        self._op(run, key)

    def write(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        tries = [0]

        def run(sftp: Any) -> None:
            tries[0] += 1
            full = self._full(key)
            parent = posixpath.dirname(full)
            self._makedirs(sftp, key, parent)
            try:
                existing = sftp.lstat(full)
            except FileNotFoundError:
                existing = None
            if existing is not None and not overwrite:
                if tries[0] > 1 and self._same_content(sftp, full, existing, data):
                    return  # our previous attempt completed before the connection dropped
                raise ObjectError(key, "something already exists at this key")
            if existing is not None and not stat.S_ISREG(existing.st_mode or 0):
                raise ObjectError(key, "something that is not a regular file is at this key")
            tmp = posixpath.join(parent, f".fsq-tmp-{secrets.token_hex(8)}")
            try:
                with sftp.open(tmp, "wbx") as f:
                    f.set_pipelined(True)
                    f.write(data)
                if overwrite:
                    sftp.posix_rename(tmp, full)
                else:
                    try:
                        sftp.rename(tmp, full)  # link()+unlink() on OpenSSH: never overwrites
                    except OSError:
                        try:
                            sftp.lstat(full)
                        except FileNotFoundError:
                            raise
                        raise ObjectError(key, "something already exists at this key") \
                            from None
            except BaseException:
                try:
                    sftp.remove(tmp)
                except Exception:
                    pass
                raise

        self._op(run, key)

    def _makedirs(self, sftp: Any, key: str, parent: str) -> None:
        root = self._real_root or self.root
        rel = posixpath.relpath(parent, root)
        cur = root
        if rel != ".":
            for seg in rel.split("/"):
                cur = posixpath.join(cur, seg)
                try:
                    st = sftp.lstat(cur)
                except FileNotFoundError:
                    try:
                        sftp.mkdir(cur, 0o755)
                    except OSError:
                        st = sftp.lstat(cur)  # made concurrently? must be a real directory
                    else:
                        continue
                if not stat.S_ISDIR(st.st_mode or 0):
                    raise ObjectError(key, "path goes through a symlink or non-directory; "
                                      "refusing")
        if sftp.normalize(parent) != parent:
            raise ObjectError(key, "path goes through a symlink; refusing")

    def _same_content(self, sftp: Any, full: str, st: Any, data: bytes) -> bool:
        if not stat.S_ISREG(st.st_mode or 0) or int(st.st_size or 0) != len(data):
            return False
        with sftp.open(full, "rb") as f:
            f.prefetch(len(data))
            return f.read() == data

    def close(self) -> None:
        with self._lock:
            self._drop()


def _listdir_raw(sftp: Any, path: str) -> list[Any]:
    """``SFTPClient.listdir_attr`` with names taken as bytes and decoded like ``os.fsdecode``
    (UTF-8, surrogateescape), so one name that is not UTF-8 cannot fail the listing. Same
    protocol exchange as paramiko's (OPENDIR, READDIR until EOF, CLOSE); '.' and '..' are
    dropped. Uses paramiko's request and attribute parsing (stable since paramiko 1.x)."""
    from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR
    from paramiko.sftp_attr import SFTPAttributes

    t, msg = sftp._request(CMD_OPENDIR, path)
    if t != CMD_HANDLE:
        raise paramiko.sftp.SFTPError("Expected handle")
    handle = msg.get_binary()
    out: list[Any] = []
    try:
        while True:
            try:
                t, msg = sftp._request(CMD_READDIR, handle)
            except EOFError:
                break  # end of the directory
            if t != CMD_NAME:
                raise paramiko.sftp.SFTPError("Expected name response")
            for _ in range(msg.get_int()):
                name = msg.get_string().decode("utf-8", "surrogateescape")
                longname = msg.get_string().decode("utf-8", "replace")
                attr = SFTPAttributes._from_msg(msg, name, longname)
                if name not in (".", ".."):
                    out.append(attr)
    finally:
        sftp._request(CMD_CLOSE, handle)
    return out

