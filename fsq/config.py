"""Settings: one registry, one resolution order.

Precedence (highest first): CLI flag > ``FSQ_*`` environment variable > ``.env`` file in the
working directory > built-in default.

Every setting fsq understands is declared once in ``SETTINGS`` below, with its parser, default,
help text and whether it is secret. ``env_example`` is checked against this list by the tests, and
``fsq config show`` prints it with secrets masked. An unknown ``FSQ_*`` name or a malformed value
is a ``ConfigError`` (exit 2) naming the setting.

Secrets (passphrases, API keys, database URLs with passwords) are held in the Settings object but
never rendered: ``masked()`` and ``repr()`` hide them.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from fsq.errors import ConfigError

# Names starting with this prefix are test-only switches; they are allowed in the environment,
# never in .env, and each one prints a warning when set (see fsq.testonly).
TESTONLY_PREFIX = "FSQ_TESTONLY_"


# --- parsers -----------------------------------------------------------------------------------

def _str(value: str) -> str:
    return value


def _opt_str(value: str) -> str | None:
    return value if value != "" else None


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false (1/0, yes/no, on/off)")


def _int_min(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if n < minimum:
            raise ValueError(f"must be at least {minimum}")
        return n

    return parse


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    at_least = _int_min(lo)

    def parse(value: str) -> int:
        n = at_least(value)
        if n > hi:
            raise ValueError(f"must be at most {hi}")
        return n

    return parse


def _float_min(minimum: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            n = float(value.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if n < minimum:
            raise ValueError(f"must be at least {minimum}")
        return n

    return parse


def _float_range(lo: float, hi: float) -> Callable[[str], float]:
    at_least = _float_min(lo)

    def parse(value: str) -> float:
        n = at_least(value)
        if n > hi:
            raise ValueError(f"must be at most {hi}")
        return n

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        v = value.strip().lower()
        if v not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return v

    return parse


def _threads(value: str) -> int | str:
    from fsq.classify.threads import parse
    return parse(value)


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:14051")
    return value


def _paths(value: str) -> tuple[str, ...]:
    return tuple(p for p in (s.strip() for s in value.split(",")) if p)


# --- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    name: str                 # attribute name on Settings, e.g. "db"
    default: Any              # already-parsed default (None = unset)
    parse: Callable[[str], Any]
    help: str
    example: str = ""         # value shown in env_example
    secret: bool = False      # never printed; "url" secrets are printed with the password masked
    group: str = "general"
    url: bool = False         # a connection string: shown with only its password masked

    @property
    def env(self) -> str:
        return "FSQ_" + self.name.upper()


S = Setting
SETTINGS: tuple[Setting, ...] = (
    # general
    S("db", "./fsq.db", _str, "SQLite state database (scan state, incidents, audit log).",
      "./fsq.db"),
    S("log_level", "info", _choice("debug", "info", "warning", "error"), "Log verbosity.",
      "info"),
    # scanning
    S("source", None, _opt_str,
      "Where pict-rs keeps its files: file:///path, sftp://user@host:port/path or "
      "s3://bucket/prefix.", "file:///srv/lemmy/volumes/pictrs/files", group="scan"),
    S("model", "ViT-L-14", _str,
      "open_clip architecture name, or path to an open_clip model-config JSON file.",
      "ViT-L-14", group="scan"),
    S("pretrained", "openai", _str,
      "open_clip pretrained tag (downloaded on machines with internet) or a local checkpoint "
      "file.", "openai", group="scan"),
    S("concepts", None, _opt_str,
      "Concept-set TOML file; empty = the set shipped with fsq (calibrated for "
      "ViT-L-14/openai).", "", group="scan"),
    S("severity", "balanced", _choice("strict", "balanced", "lenient"),
      "Shifts every threshold: strict -0.01, balanced 0, lenient +0.01.", "balanced",
      group="scan"),
    S("precision", "auto", _choice("auto", "fp32", "bf16", "fp16", "int8"),
      "Inference precision. auto = bf16 on CPUs with AMX/AVX512-BF16, fp16 on CUDA, else fp32. "
      "int8 (ONNX Runtime) only after a passing `fsq model check`; auto never picks it.",
      "auto", group="scan"),
    S("backend", "auto", _choice("auto", "torch", "onnx", "openvino"),
      "Image-tower runtime. auto = torch where bf16/fp16 is used, else ONNX Runtime fp32 if "
      "fsq[onnx] is installed and its export check passes, else torch. openvino (fsq[openvino],"
      " bf16 or fp32, an explicit choice: faster than torch bf16 on bf16 CPUs as measured in "
      "docs/performance.md).", "auto", group="scan"),
    S("device", "auto", _choice("auto", "cpu", "cuda"), "Inference device.", "auto",
      group="scan"),
    S("batch_size", 8, _int_min(1), "Images per model batch.", "8", group="scan"),
    S("workers", 2, _int_min(1), "Fetch/decode worker threads.", "2", group="scan"),
    S("threads", 0, _threads,
      "torch intra-op threads: a number, 0 = torch's default (one per core), or auto = one "
      "per core the 1-minute load average says is free (fsq.classify.threads; the advice for "
      "shared servers is in docs/performance.md).", "0", group="scan"),
    S("unreadable", "skip", _choice("skip", "flag"),
      "What to do with files that cannot be decoded (videos, corrupt files): skip (count and "
      "list them) or flag them for quarantine.", "skip", group="scan"),
    S("max_pixels", 64_000_000, _int_min(1),
      "Decompression-bomb guard: images claiming more pixels are unreadable.", "64000000",
      group="scan"),
    S("decode_workers", 2, _int_min(1),
      "Decode worker processes (fsq scan and fsq serve). A file that overruns its budget "
      "costs one worker, which is killed and replaced.", "2", group="scan"),
    S("decode_seconds", 10.0, _float_min(0.1),
      "CPU seconds one file may take to decode; over it the worker is killed and the file is "
      "unreadable (scan) or follows --on-error (serve). Wall-clock limit: this + 1.5 s.", "10",
      group="scan"),
    S("decode_pixels", 1_000_000_000, _int_min(1),
      "Pixels one file may make a decoder produce: logical screen x frames walked (animated "
      "GIF/WebP/APNG composite every earlier frame). Frames past it are not examined.",
      "1000000000", group="scan"),
    S("max_frames", 32, _int_min(1),
      "Frames sampled from one animation or video, spread over all its frames / its whole "
      "duration (a file flags if any sampled frame flags).", "32", group="scan"),
    S("frame_skip", 2.0, _float_range(0.0, 8.0),
      "Near-identical frames: a sampled frame whose difference from an already classified "
      "frame of the same file is below this is not classified again and takes that frame's "
      "verdict (recorded). Difference: the largest mean absolute difference of any 8x8 block "
      "of the model's input, in 8-bit levels (0-255). 0 = classify every sampled frame; at "
      "most 8.", "2", group="scan"),
    S("max_video_seconds", 3600, _int_min(1),
      "Videos declaring a longer duration (or more frames than that at their frame rate) are "
      "unreadable, checked before any frame is decoded.", "3600", group="scan"),
    S("appended_data", "flag", _choice("flag", "record"),
      "Files carrying data after their format's real end (a second image, an archive): flag "
      "them for quarantine and review (pict-rs serves those bytes too), or only record it. "
      "Embedded images are classified either way.", "flag", group="scan"),
    S("max_bytes", 200 * 1024 * 1024, _int_min(1),
      "Files larger than this are not fetched (status error, reason too large).", "209715200",
      group="scan"),
    S("interval", 300, _int_min(1), "Seconds between passes of `fsq scan --daemon`.", "300",
      group="scan"),
    S("hash_lists", (), _paths,
      "Comma-separated files of known-bad hashes (hex SHA-256 or MD5, one per line). A match "
      "flags without running the model.", "", group="scan"),
    S("pdq_distance", 31, _int_range(0, 64),
      "PDQ match: a decoded image within this many bits (of 256) of an entry of an unsafe "
      "hash bank is flagged without the model (`fsq hashes`).", "31", group="scan"),
    S("pdq_safe_distance", 10, _int_range(0, 32),
      "PDQ match against the safe bank (released false positives): clean without the model "
      "only within this many bits, on every frame.", "10", group="scan"),
    S("cache_dir", None, _opt_str,
      "Cache for text embeddings; empty = $XDG_CACHE_HOME/fsq or ~/.cache/fsq.", "",
      group="scan"),
    S("engine", "local", _choice("local", "ray"),
      "How `fsq scan` executes a pass: local (threads of this host) or ray (fetch, decode and "
      "classify on a Ray cluster; pip install 'fsq[ray]'; docs/scale.md).", "local",
      group="scan"),
    S("variant_linkage", "auto", _choice("auto", "off"),
      "pict-rs variants (thumbnails, resizes) and motion files take their original's verdict "
      "instead of being classified, and are quarantined into the original's incident when it "
      "is flagged: auto = when FSQ_PICTRS_DATABASE_URL is set (the repo says which file is "
      "which); off = classify every file.", "auto", group="scan"),
    S("ray_address", None, _opt_str,
      "Ray cluster to join with FSQ_ENGINE=ray (host:6379, or auto); empty = start a Ray "
      "instance on this host for the pass.", "", group="scan"),
    S("ray_actors", 0, _int_min(0),
      "Classifier actors with FSQ_ENGINE=ray (one model load each); 0 = one per GPU of the "
      "cluster, else one per 4 CPUs.", "0", group="scan"),
    # vault
    S("vault", "file://./quarantine", _str,
      "Quarantine vault: file:///path (directory) or s3://bucket/prefix.",
      "file://./quarantine", group="vault"),
    S("vault_public_key", None, _opt_str,
      "Vault public key file (all the scanner needs). Empty = ./keys/vault.pub.", "",
      group="vault"),
    S("vault_private_key", None, _opt_str,
      "Passphrase-encrypted vault private key file, needed only to read evidence. "
      "Empty = ./keys/vault.key.", "", group="vault"),
    S("vault_passphrase", None, _opt_str,
      "Passphrase of the private key. Prefer --passphrase-file or the prompt.", "",
      secret=True, group="vault"),
    S("vault_object_lock_mode", "governance", _choice("governance", "compliance", "off"),
      "S3 vault with Object Lock: retention mode put on sealed objects.", "governance",
      group="vault"),
    # retention
    S("retention_days", 365, _int_min(0),
      "Days evidence is kept after an incident is marked reported (`fsq incident "
      "mark-reported`), or after it was quarantined if it never was. 365 = the US "
      "preservation year after a CyberTipline report (18 U.S.C. 2258A(h)). Purge also needs "
      "a person's clearance (`fsq clear`) and no active hold (`fsq hold`), and holds keep "
      "evidence longer whatever this says. Check your own jurisdiction; not legal advice.",
      "365", group="retention"),
    S("audit_witness", None, _opt_str,
      "Where to append the audit chain head (seq, hash, time, signature) after every command "
      "that wrote audit rows: a file path, s3://bucket/prefix (Object Lock bucket "
      "recommended) or syslog://host:514. `fsq audit verify --witness` then detects a "
      "truncated or rewritten log. Keep it where database writers cannot rewrite it.", "",
      group="retention"),
    S("audit_witness_interval", 300.0, _float_min(1.0),
      "Seconds between witnessed heads in `fsq serve` (only when the log grew).", "300",
      group="retention"),
    # reports and linkage
    S("reports_dir", "./reports", _str, "Where `fsq report` writes HTML reports.",
      "./reports", group="reports"),
    S("templates_dir", None, _opt_str,
      "Directory of Jinja2 templates overriding the shipped ones.", "", group="reports"),
    S("lemmy_database_url", None, _opt_str,
      "Lemmy PostgreSQL URL (read-only use), for linking files to posts and accounts.",
      "postgresql://lemmy_ro:PASSWORD@localhost:5432/lemmy", secret=True, group="reports",
      url=True),
    S("pictrs_database_url", None, _opt_str,
      "pict-rs 0.5 PostgreSQL repo URL (read-only use).",
      "postgresql://pictrs_ro:PASSWORD@localhost:5432/pictrs", secret=True, group="reports",
      url=True),
    S("pictrs_url", None, _opt_str, "pict-rs base URL for its internal API.",
      "http://127.0.0.1:8080", group="reports"),
    S("pictrs_api_key", None, _opt_str, "pict-rs PICTRS__SERVER__API_KEY.", "", secret=True,
      group="reports"),
    S("pictrs_purge_on_purge", False, _bool,
      "On purge, also ask pict-rs (POST /internal/purge; needs FSQ_PICTRS_URL and "
      "FSQ_PICTRS_API_KEY) to delete the incident's known aliases and their metadata. A "
      "failure is reported; the purge itself stands.", "false",
      group="retention"),
    S("instance_url", None, _opt_str,
      "Public URL of the Lemmy instance (used for links in reports, and named in the "
      "attestations `fsq attest publish` signs).",
      "https://lemmy.example", group="reports"),
    # Lemmy API (moderation follow-up: fsq lemmy ...)
    S("lemmy_url", None, _opt_str,
      "Lemmy base URL for moderation actions (`fsq lemmy remove|ban|purge`); the API version "
      "(0.19: /api/v3, 1.0: /api/v4) is detected from GET /site.", "https://lemmy.example",
      group="lemmy"),
    S("lemmy_jwt", None, _opt_str,
      "JWT of a Lemmy admin account (Authorization: Bearer). Or set FSQ_LEMMY_USERNAME and "
      "FSQ_LEMMY_PASSWORD to log in for each command.", "", secret=True, group="lemmy"),
    S("lemmy_username", None, _opt_str, "Lemmy admin user name or email, for a login.", "",
      group="lemmy"),
    S("lemmy_password", None, _opt_str, "Password of FSQ_LEMMY_USERNAME.", "", secret=True,
      group="lemmy"),
    S("lemmy_timeout", 30.0, _float_min(1.0), "Seconds to wait for each Lemmy API answer.",
      "30", group="lemmy"),
    # S3
    S("s3_endpoint", None, _opt_str,
      "S3 endpoint URL for non-AWS stores (MinIO, Garage, ...).", "", group="s3"),
    S("s3_region", None, _opt_str, "S3 region.", "", group="s3"),
    S("s3_path_style", False, _bool, "Use path-style S3 addressing.", "false", group="s3"),
    S("s3_profile", None, _opt_str, "AWS profile name for credentials.", "", group="s3"),
    S("s3_delete_all_versions", True, _bool,
      "On a versioned source bucket, quarantine deletes every version of the key.", "true",
      group="s3"),
    # SFTP
    S("sftp_key_file", None, _opt_str, "SSH private key for SFTP sources.",
      "~/.ssh/id_ed25519", group="sftp"),
    S("sftp_key_passphrase", None, _opt_str, "Passphrase of the SSH key (or prompt).", "",
      secret=True, group="sftp"),
    S("sftp_known_hosts", "~/.ssh/known_hosts", _str, "known_hosts file checked for host keys.",
      "~/.ssh/known_hosts", group="sftp"),
    S("sftp_accept_new_host_key", False, _bool,
      "Accept and record an unknown host key (never a changed one).", "false", group="sftp"),
    # upload-time server
    S("serve_listen", "127.0.0.1:14051", _listen, "Listen address of `fsq serve`.",
      "127.0.0.1:14051", group="serve"),
    S("serve_token", None, _opt_str,
      "Shared token pict-rs must send (URL path /validate/TOKEN or X-Fsq-Token header).", "",
      secret=True, group="serve"),
    S("serve_max_body", 100 * 1024 * 1024, _int_min(1),
      "Largest upload accepted by `fsq serve`, bytes (bigger -> 413).", "104857600",
      group="serve"),
    S("serve_on_error", "reject", _choice("accept", "reject"),
      "Answer when the check itself fails or overloads.", "reject", group="serve"),
    S("serve_timeout", 20.0, _float_min(0.1),
      "Seconds a request may wait for its verdict (keep below pict-rs's 30 s).", "20",
      group="serve"),
    S("serve_queue", 64, _int_min(1), "Maximum queued uploads before overload policy applies.",
      "64", group="serve"),
    S("serve_batch_wait_ms", 10, _int_min(0),
      "Milliseconds to gather concurrent uploads into one batch.", "10", group="serve"),
    S("serve_header_timeout", 10.0, _float_min(0.1),
      "Seconds a connection may take to send its request headers, else it is closed.", "10",
      group="serve"),
    S("serve_body_timeout", 15.0, _float_min(0.1),
      "Seconds a request may take to send its whole body, else 408.", "15", group="serve"),
    S("serve_max_connections", 1024, _int_min(16),
      "Open connections at most; over it the oldest that sent no request is closed.", "1024",
      group="serve"),
    # review console
    S("review_listen", "127.0.0.1:8750", _listen,
      "Listen address of `fsq review` (anything but loopback needs --allow-remote).",
      "127.0.0.1:8750", group="review"),
    S("review_reviewer", None, _opt_str,
      "Reviewer name recorded with every view and decision; empty = the OS user@host.", "",
      group="review"),
    S("review_idle_minutes", 15.0, _float_min(0.01),
      "Minutes without a request after which a review session locks.", "15", group="review"),
    S("review_blur", True, _bool,
      "Blur the first preview step of every file (reviewer wellbeing; turning it off makes "
      "every preview count as a view of the file).", "true", group="review"),
    S("review_grayscale", True, _bool,
      "Show the first two preview steps in grayscale.", "true", group="review"),
    S("review_allowed_hosts", (), _paths,
      "Extra Host names (comma-separated HOST or HOST:PORT) the console answers to, e.g. the "
      "name of a TLS proxy in front of `fsq review --allow-remote`.", "", group="review"),
    # shared verdicts between instances (fsq attest / fsq peers, docs/federation.md)
    S("attest_key", None, _opt_str,
      "This instance's passphrase-encrypted Ed25519 signing key for attestations (separate "
      "from the vault key). Empty = ./keys/attest.key.", "", group="exchange"),
    S("attest_passphrase", None, _opt_str,
      "Passphrase of the signing key. Prefer --passphrase-file or the prompt.", "",
      secret=True, group="exchange"),
    S("attest_publish_model", False, _bool,
      "Also publish model verdicts (default: only human-reviewed safe/unsafe ones).", "false",
      group="exchange"),
    S("attest_listen", "127.0.0.1:14052", _listen,
      "Listen address of `fsq attest serve` (/.well-known/fsq/...).", "127.0.0.1:14052",
      group="exchange"),
    S("trust_safe", "off", _choice("off", "peers"),
      "peers = a trusted peer's human 'safe' statement about the exact sha256 records the "
      "file clean without the model (method attestation); off = always run the model.", "off",
      group="exchange"),
    S("trust_unsafe", "review", _choice("review", "quarantine", "off"),
      "A trusted peer's 'unsafe' statement: review = flag for a person with priority, never "
      "quarantine by itself; quarantine = quarantine on a peer's human verdict; off = ignore.",
      "review", group="exchange"),
    S("peers_max_response_bytes", 8 * 1024 * 1024, _int_min(1024),
      "Largest peer response accepted by `fsq peers pull`; bigger is refused.", "8388608",
      group="exchange"),
    S("peers_max_statements", 1000, _int_min(1),
      "Most statements accepted in one peer response page.", "1000", group="exchange"),
    S("peers_timeout", 10.0, _float_min(0.1), "Seconds a peer may take to answer.", "10",
      group="exchange"),
)
del S

_BY_NAME = {s.name: s for s in SETTINGS}
_BY_ENV = {s.env: s for s in SETTINGS}


def setting(name: str) -> Setting:
    return _BY_NAME[name]


# --- .env --------------------------------------------------------------------------------------

_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a simple .env file: KEY=VALUE, '#' comments, optional single/double quotes."""
    result: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return result
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc.__class__.__name__}; fix or remove it")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _DOTENV_LINE.match(line)
        if not m:
            raise ConfigError(f"{path}:{lineno}: not KEY=VALUE; fix or remove the line")
        key, value = m.group(1), m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        result[key] = value
    return result


# --- resolution --------------------------------------------------------------------------------

def _unknown(name: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(_BY_ENV), n=1)
    hint = f"; did you mean {close[0]}?" if close else "; see env_example for every setting"
    return ConfigError(f"unknown setting {name} in {where}{hint}")


def _parse(s: Setting, raw: str, where: str) -> Any:
    try:
        return s.parse(raw)
    except ValueError as exc:
        shown = "(hidden)" if s.secret else repr(raw)
        raise ConfigError(f"{s.env}={shown} from {where}: {exc}") from None


def mask_url(url: str) -> str:
    """Hide the credentials of a URL or DSN (kept for callers; it is ``mask_secrets``, the one
    masking function: userinfo password, credential query parameters, libpq ``password=``,
    registered secret values)."""
    from fsq.secrets import mask_secrets
    return mask_secrets(url)


class Settings:
    """Resolved settings; attribute access by name (``settings.db``)."""

    def __init__(self, values: dict[str, Any], origins: dict[str, str]) -> None:
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_origins", origins)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Settings are read-only; use replace()")

    def replace(self, **changes: Any) -> "Settings":
        values = dict(self._values)
        origins = dict(self._origins)
        for k, v in changes.items():
            if k not in _BY_NAME:
                raise KeyError(k)
            values[k] = v
            origins[k] = "override"
        return Settings(values, origins)

    def origin(self, name: str) -> str:
        return self._origins[name]

    def masked(self) -> dict[str, Any]:
        """Every setting with secrets hidden: safe to print or log."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            v = self._values[s.name]
            if s.secret and v is not None:
                # Only a connection string keeps its shape; any other secret (a passphrase
                # with "://" in it, a token, an API key) is hidden whole.
                v = mask_url(str(v)) if s.url else "***"
            if isinstance(v, tuple):
                v = list(v)
            out[s.env] = v
        return out

    def __repr__(self) -> str:
        return f"Settings({self.masked()!r})"


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve every setting. ``overrides`` are CLI values (None = not given)."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    dotenv = read_dotenv(cwd / ".env")

    for name in dotenv:
        if name.startswith(TESTONLY_PREFIX):
            raise ConfigError(f"{name} is a test-only switch and may not be set in .env")
        if name.startswith("FSQ_") and name not in _BY_ENV:
            raise _unknown(name, str(cwd / ".env"))
    for name in environ:
        if name.startswith("FSQ_") and not name.startswith(TESTONLY_PREFIX) \
                and name not in _BY_ENV:
            raise _unknown(name, "the environment")

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    overrides = overrides or {}
    for s in SETTINGS:
        ov = overrides.get(s.name)
        if ov is not None:
            values[s.name] = _parse(s, ov, "the command line") if isinstance(ov, str) else ov
            origins[s.name] = "flag"
        elif s.env in environ:
            values[s.name] = _parse(s, environ[s.env], "the environment")
            origins[s.name] = "env"
        elif s.env in dotenv:
            values[s.name] = _parse(s, dotenv[s.env], ".env")
            origins[s.name] = ".env"
        else:
            values[s.name] = s.default
            origins[s.name] = "default"
    unknown = set(overrides) - set(_BY_NAME)
    if unknown:  # a programming error in a CLI command, not a user error
        raise KeyError(f"unknown override(s): {sorted(unknown)}")
    from fsq.secrets import register_secret, register_url_secret
    for s in SETTINGS:  # so mask_secrets hides them in every output, whatever their shape
        if s.secret and values[s.name]:
            (register_url_secret if s.url else register_secret)(values[s.name])
    return Settings(values, origins)


def env_example_names(text: str) -> Iterable[str]:
    """Names of FSQ_* settings mentioned as assignments in an env_example text."""
    for line in text.splitlines():
        m = re.match(r"^\s*#?\s*(FSQ_[A-Z0-9_]+)=", line)
        if m:
            yield m.group(1)


_GROUP_TITLES = {
    "general": "General", "scan": "Scanning and classification", "vault": "Quarantine vault",
    "retention": "Retention, legal hold and purge", "reports": "Reports and Lemmy/pict-rs linkage",
    "s3": "S3-compatible object storage (source or vault)", "sftp": "SSH/SFTP source",
    "serve": "Upload-time checking (fsq serve, pict-rs external validation)",
    "lemmy": "Lemmy API: moderation follow-up (fsq lemmy ...)",
    "review": "Review console (fsq review, fsq export)",
    "exchange": "Shared verdicts between instances (fsq attest, fsq peers)",
}


def render_env_example() -> str:
    """The text of env_example, generated from SETTINGS (tests keep the file in sync)."""
    import textwrap
    out = ["# fsq settings. Copy to .env in the working directory (or export as environment",
           "# variables) and uncomment what you change. Precedence: command-line flag >",
           "# FSQ_* environment > .env > default. Unknown FSQ_* names are an error.",
           "# Secrets (marked) are never printed; prefer files/prompts for passphrases.", ""]
    for group, title in _GROUP_TITLES.items():
        out.append(f"# === {title} ===")
        for s in SETTINGS:
            if s.group != group:
                continue
            for line in textwrap.wrap(s.help + (" [secret]" if s.secret else ""), 92):
                out.append(f"# {line}")
            default = s.default
            if isinstance(default, tuple):
                default = ",".join(default)
            elif isinstance(default, bool):
                default = "true" if default else "false"
            out.append(f"#   default: {'(unset)' if default in (None, '') else default}")
            out.append(f"# {s.env}={s.example}")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
