"""One contract for every VaultStore: the directory vault and the S3 vault (plain, versioned,
and with Object Lock), against real storage (a temp dir, a moto server over HTTP)."""

from __future__ import annotations

import os
import secrets
import time
from datetime import datetime, timedelta, timezone

import pytest

from fsq.errors import UsageError, VaultError
from fsq.quarantine.store import VaultLocked, VaultMissing, VaultStore, open_vault


def new_name(kind: str = "blob") -> str:
    return f"{secrets.token_hex(16)}.{kind}"


@pytest.fixture(params=["dir", "s3", "s3-versioned", "s3-lock"])
def vault(request, tmp_path):
    kind = request.param
    if kind == "dir":
        pytest.importorskip("fsq.quarantine.store_dir")
        store = open_vault(f"file://{tmp_path / 'vault'}", None)
        store.test_kind = kind
        yield store
    else:
        s3 = request.getfixturevalue("s3")
        bucket = s3.make_bucket(versioned=kind == "s3-versioned", object_lock=kind == "s3-lock")
        store = open_vault(f"s3://{bucket}/vault", s3.settings())
        store.test_kind = kind
        store.test_s3 = s3
        store.test_bucket = bucket
        yield store
    store.close()


def test_put_get_exact_bytes(vault: VaultStore):
    n1, n2 = new_name("blob"), new_name("key")
    data = os.urandom(1000) + b"\x00"
    vault.put(n1, data)
    vault.put(n2, b"")
    assert vault.get(n1) == data
    assert vault.get(n2) == b""
    assert vault.exists(n1) and vault.exists(n2)


def test_put_refuses_overwrite(vault: VaultStore):
    n = new_name()
    vault.put(n, b"original")
    with pytest.raises(VaultError) as ei:
        vault.put(n, b"replacement")
    assert "exists" in str(ei.value)
    assert vault.get(n) == b"original"


def test_missing(vault: VaultStore):
    n = new_name()
    assert vault.exists(n) is False
    with pytest.raises(VaultMissing):
        vault.get(n)


def test_delete_is_idempotent(vault: VaultStore):
    n, other = new_name(), new_name()
    vault.put(n, b"x")
    vault.put(other, b"y")
    vault.delete(n)
    assert not vault.exists(n)
    with pytest.raises(VaultMissing):
        vault.get(n)
    vault.delete(n)
    vault.delete(new_name())
    assert vault.get(other) == b"y"


def test_names_lists_only_vault_objects(vault: VaultStore):
    names = sorted(new_name(k) for k in ("blob", "key", "blob"))
    for n in names:
        vault.put(n, b"1")
    if vault.test_kind == "dir":
        (open(os.path.join(vault.root, "README.txt"), "w")).close()
    else:
        c = vault.test_s3.client
        c.put_object(Bucket=vault.test_bucket, Key="vault/README.txt", Body=b"foreign")
        c.put_object(Bucket=vault.test_bucket, Key="vault/sub/" + new_name(), Body=b"nested")
        c.put_object(Bucket=vault.test_bucket, Key="elsewhere/" + new_name(), Body=b"outside")
    assert list(vault.names()) == names


BAD_NAMES = ["../" + "a" * 32 + ".blob", "a" * 32 + ".txt", "A" * 32 + ".key",
             "a" * 31 + ".blob", "/abs.blob", "", "x/" + "a" * 32 + ".key", "a" * 32 + ".blob/"]


def test_invalid_names_rejected(vault: VaultStore):
    for bad in BAD_NAMES:
        for call in (lambda: vault.put(bad, b"x"), lambda: vault.get(bad),
                     lambda: vault.delete(bad), lambda: vault.exists(bad)):
            with pytest.raises(UsageError):
                call()
    assert list(vault.names()) == []


def test_large_object(vault: VaultStore):
    n = new_name()
    data = os.urandom(8 * 1024 * 1024 + 7)
    vault.put(n, data)
    assert vault.get(n) == data


def test_set_retention_without_object_lock_is_a_no_op(vault: VaultStore):
    if vault.test_kind == "s3-lock":
        pytest.skip("has object lock")
    n = new_name()
    vault.put(n, b"x")
    vault.set_retention(n, datetime.now(timezone.utc) + timedelta(days=365))
    vault.delete(n)
    assert not vault.exists(n)


def test_delete_in_versioned_bucket_leaves_no_version(vault: VaultStore):
    """Crypto-shredding is real only if no old version of the key object survives."""
    if not vault.test_kind.startswith("s3-"):
        pytest.skip("S3 versioned buckets only")
    n = new_name("key")
    vault.put(n, b"wrapped data key")
    c = vault.test_s3.client
    # someone (a backup tool, an older fsq) left a second version and a delete marker
    c.put_object(Bucket=vault.test_bucket, Key=f"vault/{n}", Body=b"older copy")
    c.delete_object(Bucket=vault.test_bucket, Key=f"vault/{n}")
    c.put_object(Bucket=vault.test_bucket, Key=f"vault/{n}", Body=b"wrapped data key")
    assert len(vault.test_s3.all_versions(vault.test_bucket, f"vault/{n}")) == 4
    vault.delete(n)
    assert vault.test_s3.all_versions(vault.test_bucket, f"vault/{n}") == []


# -- Object Lock -------------------------------------------------------------------------------

@pytest.fixture
def locked(s3):
    def make(**settings):
        bucket = s3.make_bucket(object_lock=True)
        store = open_vault(f"s3://{bucket}/v", s3.settings(**settings))
        store.test_s3, store.test_bucket = s3, bucket
        return store
    return make


def _retention(store, name):
    c = store.test_s3.client
    versions = store.test_s3.all_versions(store.test_bucket, f"v/{name}")
    out = []
    for v in versions:
        # HEAD, not GetObjectRetention: moto's server answers the latter with a 500
        r = c.head_object(Bucket=store.test_bucket, Key=f"v/{name}", VersionId=v["VersionId"])
        out.append((r["ObjectLockMode"], r["ObjectLockRetainUntilDate"]))
    return out


def test_object_lock_retention_blocks_delete(locked):
    store = locked()
    assert store.object_lock_enabled()
    n = new_name("key")
    store.put(n, b"wrapped key")
    until = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0)
    store.set_retention(n, until)
    assert _retention(store, n) == [("GOVERNANCE", until)]
    assert store.retention(n) == until
    assert store.retention_blocks_delete(n) == until
    with pytest.raises(VaultLocked) as ei:
        store.delete(n)
    assert ei.value.until == until and ei.value.name == n
    assert until.date().isoformat() in str(ei.value)
    assert store.get(n) == b"wrapped key"  # untouched, not even a delete marker
    assert len(store.test_s3.all_versions(store.test_bucket, f"v/{n}")) == 1


def test_object_lock_retention_never_shortened_only_extended(locked):
    store = locked()
    n = new_name()
    store.put(n, b"x")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    store.set_retention(n, now + timedelta(days=60))
    store.set_retention(n, now + timedelta(days=10))  # shorter: ignored
    assert store.retention(n) == now + timedelta(days=60)
    store.set_retention(n, now + timedelta(days=400))  # a hold was added: extended
    assert store.retention(n) == now + timedelta(days=400)
    assert _retention(store, n) == [("GOVERNANCE", now + timedelta(days=400))]


def test_object_lock_compliance_mode_and_off(locked):
    store = locked(vault_object_lock_mode="compliance")
    n = new_name()
    store.put(n, b"x")
    until = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    store.set_retention(n, until)
    assert _retention(store, n) == [("COMPLIANCE", until)]

    off = locked(vault_object_lock_mode="off")
    m = new_name()
    off.put(m, b"y")
    off.set_retention(m, until)
    assert off.retention(m) is None
    off.delete(m)
    assert not off.exists(m)


def test_object_lock_expired_retention_allows_delete(locked):
    store = locked()
    n = new_name()
    store.put(n, b"x")
    store.set_retention(n, datetime.now(timezone.utc) + timedelta(seconds=2))
    with pytest.raises(VaultLocked):
        store.delete(n)
    time.sleep(2.2)
    assert store.retention_blocks_delete(n) is None
    store.delete(n)
    assert not store.exists(n)
    assert store.test_s3.all_versions(store.test_bucket, f"v/{n}") == []


def test_object_lock_legal_hold_blocks_delete(locked):
    store = locked()
    n = new_name()
    store.put(n, b"x")
    store.test_s3.client.put_object_legal_hold(Bucket=store.test_bucket, Key=f"v/{n}",
                                               LegalHold={"Status": "ON"})
    with pytest.raises(VaultLocked):
        store.delete(n)
    assert store.get(n) == b"x"


def test_set_retention_on_missing_object(locked):
    store = locked()
    with pytest.raises(VaultMissing):
        store.set_retention(new_name(), datetime.now(timezone.utc) + timedelta(days=1))


def test_s3_vault_errors_are_clear(s3, monkeypatch):
    from fsq.errors import ConfigError, ExternalError

    with pytest.raises(ExternalError) as ei:
        open_vault("s3://no-such-bucket-fsq/v", s3.settings())
    assert "does not exist" in str(ei.value)
    with pytest.raises(UsageError):
        open_vault("s3://user:pw@bucket/v", s3.settings())
    bucket = s3.make_bucket()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError) as ei:
        open_vault(f"s3://{bucket}/v", s3.settings())
    assert "credentials" in str(ei.value)
