"""Storage outages at the Source level: the S3 endpoint or sshd goes away before or in the
middle of a listing or a read. The Source must fail fast with one clear SourceError (exit 3),
and work again, with nothing missing, once the server is back. (The same through the CLI,
with quarantine moves, is in the integration tests.)"""

from __future__ import annotations

import time

import pytest

from fsq.errors import SourceError
from fsq.sources.s3 import S3Source
from fsq.sources.sftp import SFTPSource


# -- S3 ------------------------------------------------------------------------------------------

def _bucket_with(ep, n: int) -> str:
    bucket = ep.make_bucket()
    for i in range(n):
        ep.client.put_object(Bucket=bucket, Key=f"files/{i:04d}.jpg", Body=b"%d" % i)
    return bucket


def test_s3_endpoint_down_at_open_fails_fast(s3_process):
    bucket = _bucket_with(s3_process, 1)
    s3_process.stop()
    t0 = time.monotonic()
    with pytest.raises(SourceError) as ei:
        S3Source.from_url(f"s3://{bucket}/files", s3_process.settings())
    assert time.monotonic() - t0 < 15
    msg = str(ei.value)
    assert ei.value.exit_code == 3
    assert "unreachable" in msg and s3_process.url in msg
    assert "testing" not in msg  # no credentials in messages
    assert "\n" not in msg


def test_s3_endpoint_down_mid_listing_and_mid_read_then_back(s3_process):
    bucket = _bucket_with(s3_process, 250)
    src = S3Source.from_url(f"s3://{bucket}/files", s3_process.settings())
    src.page_size = 100
    it = src.list()
    first = [next(it) for _ in range(100)]  # the whole first page
    s3_process.stop()
    with pytest.raises(SourceError, match="unreachable"):
        list(it)
    with pytest.raises(SourceError, match="unreachable"):
        src.read(first[0].key)
    s3_process.start()
    again = list(src.list())
    assert len(again) == 250 and len({o.key for o in again}) == 250
    assert src.read("0249.jpg") == b"249"


def test_s3_missing_bucket_and_credentials(s3, monkeypatch):
    from fsq.errors import ConfigError

    with pytest.raises(SourceError, match="does not exist"):
        S3Source.from_url("s3://fsq-no-such-bucket/x", s3.settings())
    bucket = s3.make_bucket()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="no AWS credentials"):
        S3Source.from_url(f"s3://{bucket}/x", s3.settings())


def test_s3_profile_credentials(s3, tmp_path, monkeypatch):
    """Credentials from a named profile, as pict-rs admins keep them in ~/.aws."""
    from fsq.errors import ConfigError

    creds = tmp_path / "credentials"
    creds.write_text("[pictrs]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    bucket = _bucket_with(s3, 2)
    src = S3Source.from_url(f"s3://{bucket}/files", s3.settings(s3_profile="pictrs"))
    assert len(list(src.list())) == 2
    with pytest.raises(ConfigError, match="profile 'nope' not found"):
        S3Source.from_url(f"s3://{bucket}/files", s3.settings(s3_profile="nope"))


# -- SFTP ----------------------------------------------------------------------------------------

pytest_sshd = pytest.mark.sshd


@pytest_sshd
def test_sftp_reconnects_after_server_restart(sshd):
    (sshd.root / "a.jpg").write_bytes(b"A")
    src = SFTPSource.from_url(sshd.url(), sshd.settings())
    assert src.read("a.jpg") == b"A"
    sshd.stop()
    sshd.start()
    assert src.read("a.jpg") == b"A"
    assert src.reconnects == 1
    src.close()


@pytest_sshd
def test_sftp_server_down_fails_bounded(sshd):
    (sshd.root / "a.jpg").write_bytes(b"A")
    src = SFTPSource.from_url(sshd.url(), sshd.settings())
    sshd.stop()
    t0 = time.monotonic()
    with pytest.raises(SourceError) as ei:
        src.read("a.jpg")
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert ei.value.exit_code == 3
    assert sshd.host_name in msg and "3 attempts" in msg
    sshd.start()
    assert src.read("a.jpg") == b"A"
    src.close()


@pytest_sshd
def test_sftp_server_down_mid_listing_then_back(sshd):
    for d in range(6):
        (sshd.root / f"d{d}").mkdir()
        for i in range(5):
            (sshd.root / f"d{d}" / f"{i}.jpg").write_bytes(b"x")
    src = SFTPSource.from_url(sshd.url(), sshd.settings())
    it = src.list()
    next(it)
    sshd.stop()
    with pytest.raises(SourceError):
        list(it)
    sshd.start()
    assert len(list(src.list())) == 30
    src.close()


@pytest_sshd
def test_sftp_open_while_server_down(sshd):
    sshd.stop()
    with pytest.raises(SourceError, match="unreachable"):
        SFTPSource.from_url(sshd.url(), sshd.settings())


@pytest_sshd
def test_sftp_outage_noise_from_paramiko_is_silenced(sshd, monkeypatch):
    """paramiko's read-ahead thread dies with a traceback when the connection drops under it;
    fsq reports the outage itself in one line, so exactly that traceback is swallowed."""
    import threading

    seen: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.thread.name))
    src = SFTPSource.from_url(sshd.url(), sshd.settings())

    def _prefetch_thread():  # the name paramiko's thread target has
        raise EOFError()

    def unrelated():
        raise EOFError()

    for target in (_prefetch_thread, unrelated):
        t = threading.Thread(target=target)
        t.start()
        t.join()
    assert len(seen) == 1 and seen[0].endswith("(unrelated)")
    import logging
    assert logging.getLogger("paramiko").level == logging.CRITICAL
    src.close()


@pytest_sshd
def test_sftp_channels_per_thread_and_closed_when_threads_end(sshd):
    """Each pipeline pass runs new worker threads; their SFTP channels must not pile up past
    sshd's MaxSessions over a daemon's lifetime (30 passes x 1 thread here, limit 20)."""
    import threading

    (sshd.root / "a.jpg").write_bytes(b"A")
    src = SFTPSource.from_url(sshd.url(), sshd.settings())
    for _ in range(30):
        out: list[bytes] = []
        t = threading.Thread(target=lambda: out.append(src.read("a.jpg")))
        t.start()
        t.join()
        assert out == [b"A"]
    assert len(src._channels) <= 2  # this thread's and the last worker's at most
    assert src.reconnects == 0
    src.close()
