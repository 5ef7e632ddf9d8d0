"""S3Store: the vault in a bucket (``FSQ_VAULT=s3://BUCKET/PREFIX``).

Same objects and names as the directory vault (``<32 hex>.blob``, ``<32 hex>.key``, directly
under the prefix), so a vault can be copied between the two with any S3 tool. Connection
settings and credentials are those of the S3 source (``FSQ_S3_*``, the AWS chain).

* ``put`` refuses to overwrite: ``If-None-Match: *`` (atomic on AWS, MinIO, moto) after a HEAD
  that gives a clear error on stores ignoring the header. The upload carries its SHA-256
  (``x-amz-checksum-sha256``), which S3 verifies before storing; ``get`` asks S3 to return and
  botocore to check the stored checksum, so corruption at rest is an ``IntegrityError``.
* Versioned buckets: deleting only the current version leaves the old bytes readable behind a
  delete marker, which would make purge's crypto-shredding fake (the wrapped data key would
  survive). ``delete`` therefore removes every version and delete marker of the name.
* Object Lock (detected with GetObjectLockConfiguration): ``set_retention(name, until)`` puts a
  retain-until date in ``FSQ_VAULT_OBJECT_LOCK_MODE`` (governance or compliance; ``off``
  disables it) on every version of the object, and only ever extends it - a date earlier than
  the current one is ignored, and an existing COMPLIANCE mode is kept. ``delete`` checks every
  version first and raises ``VaultLocked(name, until)`` *before deleting anything* if one is
  still retained, so purge can report the object and try again later; fsq never sends
  BypassGovernanceRetention.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone
from typing import Any, Iterator, NoReturn

from fsq.errors import ConfigError, IntegrityError, UsageError, VaultError
from fsq.quarantine.store import VaultLocked, VaultMissing, VaultStore
from fsq.quarantine.store_dir import NAME_RE, check_name
from fsq.sources.s3 import describe_s3_failure, make_s3_client, parse_s3_url, s3_error_code

_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}


class S3Store(VaultStore):
    """See the module docstring."""

    def __init__(self, bucket: str, prefix: str, settings: Any, *, client: Any = None,
                 check: bool = True) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = getattr(settings, "s3_endpoint", None) or ""
        self.lock_mode = str(getattr(settings, "vault_object_lock_mode", "governance")).lower()
        self.url = f"s3://{bucket}/{prefix}"
        self._client = client if client is not None else make_s3_client(settings)
        self._lock_enabled: bool | None = None
        self._versioned: bool | None = None
        if check:
            self._call(lambda: self._client.head_bucket(Bucket=bucket))

    @classmethod
    def from_url(cls, url: str, settings: Any) -> "S3Store":
        bucket, prefix = parse_s3_url(url, "vault")
        return cls(bucket, prefix, settings)

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    # -- helpers -------------------------------------------------------------------------------

    def _raise(self, exc: BaseException, name: str | None = None) -> NoReturn:
        import botocore.exceptions as bex

        if isinstance(exc, bex.ClientError) and name is not None \
                and s3_error_code(exc) in _MISSING:
            raise VaultMissing(f"vault object {name} does not exist in {self.url}") from None
        if isinstance(exc, bex.FlexibleChecksumError):
            raise IntegrityError(f"vault object {name} in {self.url} failed its SHA-256 "
                                 "checksum; the stored copy is corrupt") from None
        msg = describe_s3_failure(exc, self.endpoint, self.bucket)
        if isinstance(exc, bex.NoCredentialsError):
            raise ConfigError(msg or "no AWS credentials") from None
        if msg is None:
            msg = (f"vault {self.url}: S3 request failed "
                   f"({exc.__class__.__name__} {s3_error_code(exc)})").rstrip()
            if name:
                msg += f" for {name}"
        raise VaultError(msg.replace("S3 bucket", "vault bucket", 1)) from None

    def _call(self, fn: Any, name: str | None = None) -> Any:
        import botocore.exceptions as bex

        try:
            return fn()
        except (bex.BotoCoreError, bex.ClientError) as exc:
            self._raise(exc, name)

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def object_lock_enabled(self) -> bool:
        if self._lock_enabled is None:
            import botocore.exceptions as bex

            try:
                cfg = self._client.get_object_lock_configuration(Bucket=self.bucket)
            except bex.ClientError as exc:
                if s3_error_code(exc) in ("ObjectLockConfigurationNotFoundError",
                                          "ObjectLockConfigurationNotFound", "404",
                                          "NotImplemented"):
                    self._lock_enabled = False
                    return False
                self._raise(exc)
            except bex.BotoCoreError as exc:
                self._raise(exc)
            status = cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
            self._lock_enabled = status == "Enabled"
        return self._lock_enabled

    def versioned(self) -> bool:
        if self._versioned is None:
            resp = self._call(lambda: self._client.get_bucket_versioning(Bucket=self.bucket))
            self._versioned = resp.get("Status") in ("Enabled", "Suspended") \
                or self.object_lock_enabled()
        return self._versioned

    def _versions(self, name: str) -> list[dict[str, Any]]:
        """Every version and delete marker of exactly this object."""
        key = self._key(name)
        found: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": key}
        while True:
            page = self._call(lambda: self._client.list_object_versions(**kwargs), name)
            for v in page.get("Versions", ()):
                if v["Key"] == key:
                    found.append({"Key": key, "VersionId": v["VersionId"], "marker": False})
            for v in page.get("DeleteMarkers", ()):
                if v["Key"] == key:
                    found.append({"Key": key, "VersionId": v["VersionId"], "marker": True})
            if not page.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["VersionIdMarker"] = page.get("NextVersionIdMarker")

    # -- VaultStore ----------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        if self.exists(name):
            raise VaultError(f"vault object {name} already exists in {self.url}; "
                             "refusing to overwrite it")
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
        import botocore.exceptions as bex

        try:
            resp = self._client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                           ChecksumSHA256=digest, IfNoneMatch="*")
        except bex.ClientError as exc:
            if s3_error_code(exc) in ("PreconditionFailed", "412",
                                      "ConditionalRequestConflict"):
                raise VaultError(f"vault object {name} already exists in {self.url}; "
                                 "refusing to overwrite it") from None
            self._raise(exc, name)
        except bex.BotoCoreError as exc:
            self._raise(exc, name)
        echoed = resp.get("ChecksumSHA256")
        if echoed is not None and echoed != digest:
            raise IntegrityError(f"vault {self.url} stored {name} with a different SHA-256 "
                                 "than was sent; check the S3 endpoint")

    def get(self, name: str) -> bytes:
        key = self._key(name)
        import botocore.exceptions as bex

        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            data = resp["Body"].read()
        except (bex.BotoCoreError, bex.ClientError) as exc:
            self._raise(exc, name)
        except OSError as exc:
            raise VaultError(f"vault {self.url}: download of {name} failed "
                             f"({exc.__class__.__name__}); rerun") from None
        stored = resp.get("ChecksumSHA256")
        if stored and "-" not in stored:
            actual = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
            if actual != stored:
                raise IntegrityError(f"vault object {name} in {self.url} failed its SHA-256 "
                                     "checksum; the stored copy is corrupt")
        return data

    def exists(self, name: str) -> bool:
        key = self._key(name)
        import botocore.exceptions as bex

        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
            return True
        except bex.ClientError as exc:
            if s3_error_code(exc) in _MISSING:
                return False
            self._raise(exc, name)
        except bex.BotoCoreError as exc:
            self._raise(exc, name)

    def names(self) -> Iterator[str]:
        """Object names under the prefix, sorted; anything foreign is skipped."""
        out: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        plen = len(self.prefix)
        while True:
            page = self._call(lambda: self._client.list_objects_v2(**kwargs))
            for o in page.get("Contents", ()):
                rel = o["Key"][plen:]
                if NAME_RE.fullmatch(rel):
                    out.append(rel)
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        return iter(sorted(out))

    def retention(self, name: str) -> datetime | None:
        """Latest retain-until date over the object's versions (None = not retained)."""
        if not self.object_lock_enabled():
            return None
        latest: datetime | None = None
        for v in self._versions(name):
            if v["marker"]:
                continue
            until, _, _ = self._lock_state(name, v["VersionId"])
            if until is not None and (latest is None or until > latest):
                latest = until
        return latest

    def _lock_state(self, name: str, version: str) -> tuple[datetime | None, str | None, bool]:
        """(retain-until, mode, legal hold) of one version, from one HEAD request.

        HEAD returns the x-amz-object-lock-* headers on AWS, MinIO and moto alike (moto's
        server does not implement GetObjectRetention), for callers allowed to read them.
        """
        head = self._call(lambda: self._client.head_object(
            Bucket=self.bucket, Key=self._key(name), VersionId=version), name)
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None and until.tzinfo is None:
            until = until.replace(tzinfo=timezone.utc)
        mode = head.get("ObjectLockMode") or None
        return until, mode, head.get("ObjectLockLegalHoldStatus") == "ON"

    def retention_blocks_delete(self, name: str, now: datetime | None = None) -> datetime | None:
        """The date until which a delete would be refused, or None if it would succeed now."""
        until = self.retention(name)
        now = now or datetime.now(timezone.utc)
        return until if until is not None and until > now else None

    def set_retention(self, name: str, until: datetime) -> None:
        """Extend (never shorten) Object Lock retention on every version of ``name``."""
        if until.tzinfo is None:
            raise UsageError("set_retention needs a timezone-aware UTC datetime")
        if self.lock_mode == "off" or not self.object_lock_enabled():
            return
        versions = [v for v in self._versions(name) if not v["marker"]]
        if not versions:
            raise VaultMissing(f"vault object {name} does not exist in {self.url}")
        wanted = until.astimezone(timezone.utc)
        for v in versions:
            current, mode, _ = self._lock_state(name, v["VersionId"])
            if current is not None and current >= wanted:
                continue  # never shorten
            # Keep COMPLIANCE once set: weakening the mode is refused by S3 anyway.
            new_mode = "COMPLIANCE" if mode == "COMPLIANCE" else self.lock_mode.upper()
            self._call(lambda: self._client.put_object_retention(
                Bucket=self.bucket, Key=self._key(name), VersionId=v["VersionId"],
                Retention={"Mode": new_mode, "RetainUntilDate": wanted}), name)

    def delete(self, name: str) -> None:
        key = self._key(name)
        if not self.versioned():
            self._call(lambda: self._client.delete_object(Bucket=self.bucket, Key=key), name)
            return
        versions = self._versions(name)
        if self.object_lock_enabled():
            # Check first so that a locked object is left whole, not half-deleted.
            now = datetime.now(timezone.utc)
            for v in versions:
                if v["marker"]:
                    continue
                until, _, legal_hold = self._lock_state(name, v["VersionId"])
                if until is not None and until > now:
                    raise VaultLocked(name, until)
                if legal_hold:
                    raise VaultLocked(name, None)
        import botocore.exceptions as bex

        for v in versions:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=key,
                                           VersionId=v["VersionId"])
            except bex.ClientError as exc:
                code = s3_error_code(exc)
                if code in _MISSING:
                    continue
                if code in ("AccessDenied", "403") and self.object_lock_enabled():
                    raise VaultLocked(name, self.retention(name)) from None
                self._raise(exc, name)
            except bex.BotoCoreError as exc:
                self._raise(exc, name)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # pragma: no cover
            pass
