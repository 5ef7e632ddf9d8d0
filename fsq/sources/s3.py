"""S3 source: a pict-rs object-storage bucket (``--source s3://BUCKET/PREFIX``).

Connection settings are the ones a pict-rs admin already has: ``FSQ_S3_ENDPOINT`` (MinIO,
Garage, Wasabi, ...; empty = AWS), ``FSQ_S3_REGION``, ``FSQ_S3_PATH_STYLE`` and credentials
from the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``
or ``FSQ_S3_PROFILE``, ``~/.aws/credentials``, instance roles). fsq never takes keys itself.

Keys are relative to the prefix. pict-rs keys are plain identifiers, but a bucket can hold
anything: a key that is not a safe relative path (``a/../b``, ``a//b``, ``/x``) is *listed*
with a skip reason and never read or removed, so a crafted key can never make fsq act on another
key. Zero-byte "folder" markers (``dir/``) are ignored, as empty directories are locally.

Failures: the endpoint being unreachable, a missing bucket or refused credentials raise
``SourceError`` (exit 3) with one line naming the cause; a missing object is ``ObjectMissing``.
botocore retries are bounded (3 attempts, 5 s connect timeout) so a dead endpoint fails in
seconds.

Versioned buckets: ``remove`` (quarantine) deletes *every version and delete marker* of that
exact key when ``FSQ_S3_DELETE_ALL_VERSIONS`` is true (the default), because a plain DELETE on a
versioned bucket only hides the object behind a delete marker and the bytes stay readable.
Older versions are deleted as they are: fsq sealed the current bytes, not older ones (pict-rs
writes each key once, so in practice there is only one version).

Daemon cursor (owned by ``fsq.pipeline``): S3 ``LastModified`` is when the upload *started*
(for multipart uploads: when it was initiated), but the object only becomes visible when it
completes. An object can therefore first appear in a listing that starts *after* its
LastModified, and a cursor "newest LastModified seen" would skip it for ever. The pipeline's
cursor is instead the time the last *complete* listing started, and the next pass re-checks
everything modified since ``cursor - CURSOR_MARGIN_S`` (the margin covers upload time and clock
skew between this host and the store); the (size, mtime) unchanged-check in the state database
skips the repeats without a GET. S3 cannot filter a listing by time, so every pass still lists
every key; the cursor only saves database look-ups and never decides alone that a key is old.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from typing import Any, Iterator, NoReturn
from urllib.parse import unquote, urlsplit

from fsq.errors import ConfigError, SourceError, UsageError
from fsq.names import key_problem
from fsq.sources.base import ObjectError, ObjectInfo, ObjectMissing, Source, check_key

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_BUCKET_CODES = {"NoSuchBucket"}
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
               "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed"}


def parse_s3_url(url: str, what: str = "source") -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix with a trailing '/' or '')."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise UsageError(f"{what} URL {url!r} must look like s3://BUCKET/PREFIX")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise UsageError(f"{what} URL must be s3://BUCKET/PREFIX without credentials or "
                         "query; credentials come from the AWS variables or a profile")
    bucket = parts.netloc
    prefix = unquote(parts.path).strip("/")
    if prefix:
        try:
            check_key(prefix)
        except UsageError:
            raise UsageError(f"{what} URL {url!r}: the prefix must be a plain relative path") \
                from None
        prefix += "/"
    return bucket, prefix


_LOADER: Any = None
_LOADER_LOCK = threading.Lock()


def _botocore_session() -> Any:
    """A fresh botocore session (credentials resolved anew) sharing one model loader: loading
    the S3 service description is most of the cost of a client (~0.2 s)."""
    import botocore.session

    global _LOADER
    with _LOADER_LOCK:
        bs = botocore.session.get_session()
        if _LOADER is None:
            _LOADER = bs.get_component("data_loader")
        else:
            bs.register_component("data_loader", _LOADER)
    return bs


def make_s3_client(settings: Any) -> Any:
    """A boto3 S3 client from fsq settings and the standard AWS credential chain.

    boto3 clients are thread-safe, so one client serves the pipeline's worker threads.
    """
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("S3 support needs boto3: pip install 'fsq[s3]'") from None
    addressing = "path" if getattr(settings, "s3_path_style", False) else "auto"
    config = botocore.config.Config(
        s3={"addressing_style": addressing},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        max_pool_connections=16,
    )
    profile = getattr(settings, "s3_profile", None)
    try:
        session = boto3.session.Session(botocore_session=_botocore_session(),
                                        profile_name=profile)
        region = getattr(settings, "s3_region", None) or session.region_name or "us-east-1"
        return session.client("s3", endpoint_url=getattr(settings, "s3_endpoint", None),
                              region_name=region, config=config)
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError(f"AWS profile {exc.kwargs.get('profile', profile)!r} not found "
                          "(FSQ_S3_PROFILE / AWS_PROFILE); check ~/.aws/credentials and "
                          "~/.aws/config") from None
    except ValueError as exc:
        raise ConfigError(f"FSQ_S3_ENDPOINT is not a valid URL: {exc}") from None


def s3_error_code(exc: BaseException) -> str:
    resp = getattr(exc, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    if not code:
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def describe_s3_failure(exc: BaseException, endpoint: str, bucket: str) -> str | None:
    """One line for a storage-level failure (endpoint down, credentials, bucket), else None.

    Never includes credentials: botocore messages name the endpoint and the operation only.
    """
    import botocore.exceptions as bex

    where = endpoint or "AWS S3"
    if isinstance(exc, bex.NoCredentialsError):
        return ("no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "or an AWS profile (FSQ_S3_PROFILE)")
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError,
                        bex.ReadTimeoutError, bex.ConnectionClosedError)):
        return (f"S3 endpoint {where} unreachable ({exc.__class__.__name__}); check that it "
                "is running and FSQ_S3_ENDPOINT, then rerun")
    if isinstance(exc, (bex.HTTPClientError, bex.ConnectionError)):
        return f"S3 endpoint {where} connection failed ({exc.__class__.__name__}); rerun later"
    if isinstance(exc, bex.ClientError):
        code = s3_error_code(exc)
        if code in _BUCKET_CODES or (code in ("404", "NotFound")
                                     and getattr(exc, "operation_name", "") == "HeadBucket"):
            return f"S3 bucket {bucket!r} does not exist at {where}; check the URL"
        if code in _AUTH_CODES:
            return (f"S3 at {where} refused the credentials for bucket {bucket!r} ({code}); "
                    "check the AWS credentials/profile and the bucket policy")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if isinstance(status, int) and status >= 500:
            return f"S3 endpoint {where} failed ({code or status}); rerun later"
    return None


class S3Source(Source):
    """See the module docstring."""

    #: keys per ListObjectsV2 request (S3's maximum)
    page_size = 1000

    def __init__(self, bucket: str, prefix: str, settings: Any, *, client: Any = None,
                 check: bool = True) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = getattr(settings, "s3_endpoint", None) or ""
        self.delete_all_versions = bool(getattr(settings, "s3_delete_all_versions", True))
        self.url = f"s3://{bucket}/{prefix}"
        self._client = client if client is not None else make_s3_client(settings)
        self._versioned: bool | None = None
        if check:
            self._call(lambda: self._client.head_bucket(Bucket=bucket))

    @classmethod
    def from_url(cls, url: str, settings: Any) -> "S3Source":
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, settings)

    # -- helpers -------------------------------------------------------------------------------

    def _call(self, fn: Any, key: str | None = None) -> Any:
        """Run one S3 call; map storage failures to SourceError, object ones to ObjectError."""
        import botocore.exceptions as bex

        try:
            return fn()
        except (bex.BotoCoreError, bex.ClientError) as exc:
            self._raise_mapped(exc, key)

    def _raise_mapped(self, exc: BaseException, key: str | None = None) -> NoReturn:
        import botocore.exceptions as bex

        if isinstance(exc, bex.NoCredentialsError):
            raise ConfigError(describe_s3_failure(exc, self.endpoint, self.bucket) or "") \
                from None
        msg = describe_s3_failure(exc, self.endpoint, self.bucket)
        if isinstance(exc, bex.ClientError) and key is not None:
            code = s3_error_code(exc)
            if code in _MISSING_CODES:
                raise ObjectMissing(key) from None
            if code in ("AccessDenied", "403"):
                # Per-object denial (a bucket policy on some keys) is an object error; the
                # head_bucket at open already proved that the credentials work.
                raise ObjectError(key, f"access denied ({code})") from None
            if msg is None:
                raise ObjectError(key, f"S3 error {code or exc.__class__.__name__}") from None
        if msg is None:
            msg = (f"S3 request to {self.endpoint or 'AWS S3'} failed: "
                   f"{exc.__class__.__name__} {s3_error_code(exc)}").rstrip()
        raise SourceError(msg) from None

    def _full(self, key: str) -> str:
        check_key(key)
        return self.prefix + key

    # -- Source --------------------------------------------------------------------------------

    def list(self) -> Iterator[ObjectInfo]:
        """Paginated ListObjectsV2 over the prefix (1000 keys per request)."""
        token: str | None = None
        plen = len(self.prefix)
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix,
                                      "MaxKeys": self.page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(lambda: self._client.list_objects_v2(**kwargs))
            for obj in page.get("Contents", ()):
                rel = obj["Key"][plen:]
                size = int(obj.get("Size", 0))
                mtime = obj["LastModified"].timestamp()
                if rel.endswith("/") and size == 0:
                    continue  # "folder" marker made by consoles and some tools
                problem = key_problem(rel)
                if problem is not None:
                    yield ObjectInfo(rel, size, mtime, problem)
                    continue
                yield ObjectInfo(rel, size, mtime)
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:  # pragma: no cover - a broken server
                raise SourceError(f"S3 listing of {self.url} was truncated without a "
                                  "continuation token")

    def stat(self, key: str) -> ObjectInfo:
        full = self._full(key)
        head = self._call(lambda: self._client.head_object(Bucket=self.bucket, Key=full), key)
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp())

    def read(self, key: str, max_bytes: int | None = None) -> bytes:
        """One GET. With ``max_bytes`` it asks for at most ``max_bytes + 1`` bytes (Range), so
        an oversized object is detected without downloading it."""
        full = self._full(key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if max_bytes is not None:
            kwargs["Range"] = f"bytes=0-{max_bytes}"
        import botocore.exceptions as bex

        try:
            resp = self._client.get_object(**kwargs)
        except bex.ClientError as exc:
            if s3_error_code(exc) == "InvalidRange":
                # Only an empty object has no byte 0.
                resp = self._call(lambda: self._client.get_object(Bucket=self.bucket,
                                                                  Key=full), key)
            else:
                self._raise_mapped(exc, key)
        except bex.BotoCoreError as exc:
            self._raise_mapped(exc, key)
        total = _total_size(resp)
        if max_bytes is not None and total is not None and total > max_bytes:
            resp["Body"].close()
            raise ObjectError(key, f"too large ({total} bytes > {max_bytes})")
        try:
            data = resp["Body"].read()
        except (bex.BotoCoreError, OSError) as exc:
            raise SourceError(f"S3 endpoint {self.endpoint or 'AWS S3'} dropped the download "
                              f"of {key} ({exc.__class__.__name__}); rerun") from None
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectError(key, f"too large (more than {max_bytes} bytes)")
        expected = resp.get("ContentLength")
        if expected is not None and len(data) != int(expected):
            raise ObjectError(key, f"short read ({len(data)} of {expected} bytes)")
        return data

    def _is_versioned(self) -> bool:
        if self._versioned is None:
            import botocore.exceptions as bex

            try:
                resp = self._client.get_bucket_versioning(Bucket=self.bucket)
            except bex.ClientError as exc:
                if s3_error_code(exc) in ("AccessDenied", "403"):
                    raise SourceError(
                        f"cannot read the versioning state of bucket {self.bucket!r} "
                        "(s3:GetBucketVersioning denied); grant it, or set "
                        "FSQ_S3_DELETE_ALL_VERSIONS=false to delete only the current "
                        "version") from None
                self._raise_mapped(exc)
            except bex.BotoCoreError as exc:
                self._raise_mapped(exc)
            # "Suspended" buckets still hold the versions written while it was enabled.
            self._versioned = resp.get("Status") in ("Enabled", "Suspended")
        return self._versioned

    def versions(self, key: str) -> list[dict[str, Any]]:
        """Every version and delete marker of exactly ``key`` (not keys it prefixes)."""
        full = self._full(key)
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        while True:
            page = self._call(lambda: self._client.list_object_versions(**kwargs), key)
            for item in [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]:
                if item["Key"] == full:
                    found.append({"Key": full, "VersionId": item["VersionId"]})
            if not page.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["VersionIdMarker"] = page.get("NextVersionIdMarker")

    def remove(self, key: str) -> None:
        full = self._full(key)
        if self.delete_all_versions and self._is_versioned():
            victims = self.versions(key)
            for i in range(0, len(victims), 1000):
                batch = victims[i:i + 1000]
                resp = self._call(lambda: self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}), key)
                errors = [e for e in resp.get("Errors", ())
                          if e.get("Code") not in ("NoSuchKey", "NoSuchVersion")]
                if errors:
                    raise ObjectError(key, "could not delete every version: "
                                      + ", ".join(sorted({e.get('Code', '?') for e in errors})))
            return
        self._call(lambda: self._client.delete_object(Bucket=self.bucket, Key=full), key)

    def write(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        """PUT the object. Without ``overwrite`` the PUT carries ``If-None-Match: *`` (AWS,
        MinIO and moto refuse it when the key exists); a HEAD first gives a clear error on
        stores that ignore the header - on those a writer racing between the HEAD and the PUT
        could still be overwritten."""
        full = self._full(key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full, "Body": data,
                                  "ChecksumSHA256": _b64sha256(data)}
        if not overwrite:
            if self.exists(key):
                raise ObjectError(key, "something already exists at this key")
            kwargs["IfNoneMatch"] = "*"
        import botocore.exceptions as bex

        try:
            self._client.put_object(**kwargs)
        except bex.ClientError as exc:
            if s3_error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise ObjectError(key, "something already exists at this key") from None
            self._raise_mapped(exc, key)
        except bex.BotoCoreError as exc:
            self._raise_mapped(exc, key)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # pragma: no cover - best effort
            pass


_RANGE_RE = re.compile(r"bytes \d+-\d+/(\d+)")


def _total_size(resp: dict[str, Any]) -> int | None:
    cr = resp.get("ContentRange")
    if cr:
        m = _RANGE_RE.match(cr)
        if m:
            return int(m.group(1))
    return None


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
