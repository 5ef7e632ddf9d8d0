"""SFTP trust and authentication against a real sshd: known_hosts is enforced (unknown ->
refused unless explicitly accepted, changed -> always refused), key types, passphrases."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from fsq.errors import ConfigError, IntegrityError
from fsq.sources.sftp import SFTPSource
from tests.fixtures.sshd import write_private_key

pytestmark = pytest.mark.sshd


def sha256_fingerprint(pub_line: str) -> str:
    blob = base64.b64decode(pub_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_unknown_host_key_refused_with_fingerprint(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("# nothing known yet\n")
    with pytest.raises(ConfigError) as ei:
        SFTPSource.from_url(sshd.url(), sshd.settings(sftp_known_hosts=str(kh)))
    msg = str(ei.value)
    assert ei.value.exit_code == 2
    assert f"host key of {sshd.host_name} is not in {kh}" in msg
    assert sha256_fingerprint(sshd.host_pub) in msg
    assert "--accept-new-host-key" in msg and "FSQ_SFTP_ACCEPT_NEW_HOST_KEY=true" in msg
    assert kh.read_text() == "# nothing known yet\n"  # nothing recorded


def test_missing_known_hosts_file_means_unknown(sshd, tmp_path):
    kh = tmp_path / "absent" / "known_hosts"
    with pytest.raises(ConfigError, match="is not in"):
        SFTPSource.from_url(sshd.url(), sshd.settings(sftp_known_hosts=str(kh)))
    assert not kh.exists()


def test_new_host_key_accepted_with_flag_and_recorded(sshd, tmp_path):
    kh = tmp_path / "ssh" / "known_hosts"
    kh.parent.mkdir()
    kh.write_text("# keep me\n[other.example]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB"
                  "vR1zS3J0iT4Cv1nB7aSg9Kj0cKzZ2ZlRVa6h3u4l9u")  # no trailing newline
    src = SFTPSource.from_url(sshd.url(), sshd.settings(sftp_known_hosts=str(kh),
                                                         sftp_accept_new_host_key=True))
    assert list(src.list()) == []
    src.close()
    lines = kh.read_text().splitlines()
    assert lines[0] == "# keep me" and lines[1].startswith("[other.example]:2222 ")
    assert lines[2] == f"{sshd.host_name} {sshd.host_pub.split()[0]} {sshd.host_pub.split()[1]}"
    # now known: works without the flag
    src = SFTPSource.from_url(sshd.url(), sshd.settings(sftp_known_hosts=str(kh)))
    src.close()


@pytest.mark.parametrize("accept_new", [False, True])
def test_changed_host_key_refused_even_with_flag(sshd, tmp_path, accept_new):
    impostor = write_private_key(tmp_path / "impostor", "ed25519")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{sshd.host_name} {impostor}\n")
    with pytest.raises(IntegrityError) as ei:
        SFTPSource.from_url(sshd.url(), sshd.settings(sftp_known_hosts=str(kh),
                                                         sftp_accept_new_host_key=accept_new))
    msg = str(ei.value)
    assert ei.value.exit_code == 4
    assert f"HOST KEY OF {sshd.host_name} CHANGED" in msg and "refusing" in msg
    assert sha256_fingerprint(sshd.host_pub) in msg
    assert sha256_fingerprint(impostor) in msg
    assert kh.read_text() == f"{sshd.host_name} {impostor}\n"  # never rewritten


def test_host_known_under_another_key_type_is_a_change(sshd, tmp_path):
    other = write_private_key(tmp_path / "ecdsa_host", "ecdsa")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{sshd.host_name} {other}\n")
    with pytest.raises(IntegrityError, match="CHANGED"):
        SFTPSource.from_url(sshd.url(), sshd.settings(sftp_known_hosts=str(kh),
                                                         sftp_accept_new_host_key=True))
    assert kh.read_text() == f"{sshd.host_name} {other}\n"


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa", "encrypted"])
def test_key_types(sshd, kind):
    (sshd.root / "f.jpg").write_bytes(b"data")
    with SFTPSource.from_url(sshd.url(), sshd.settings(kind)) as src:
        assert src.read("f.jpg") == b"data"


def test_encrypted_key_wrong_passphrase(sshd):
    with pytest.raises(ConfigError) as ei:
        SFTPSource.from_url(sshd.url(), sshd.settings("encrypted",
                                                      sftp_key_passphrase="wrong guess"))
    assert "wrong passphrase" in str(ei.value)
    assert "wrong guess" not in str(ei.value)
    assert sshd.passphrase not in str(ei.value)


def test_encrypted_key_without_passphrase(sshd):
    # pytest's stdin is not a terminal: no prompt, a clear error
    with pytest.raises(ConfigError) as ei:
        SFTPSource.from_url(sshd.url(), sshd.settings("encrypted", sftp_key_passphrase=None))
    assert "encrypted" in str(ei.value) and "FSQ_SFTP_KEY_PASSPHRASE" in str(ei.value)


def test_encrypted_key_with_prompt(sshd):
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return sshd.passphrase

    with SFTPSource.from_url(sshd.url(), sshd.settings("encrypted", sftp_key_passphrase=None),
                             prompt=prompt) as src:
        assert list(src.list()) == []
    assert len(asked) == 1 and "Passphrase" in asked[0]


def test_unauthorised_key_refused(sshd, tmp_path):
    stranger = tmp_path / "stranger"
    write_private_key(stranger, "ed25519")
    with pytest.raises(ConfigError) as ei:
        SFTPSource.from_url(sshd.url(), sshd.settings(sftp_key_file=str(stranger)))
    assert "refused the SSH key" in str(ei.value) and "authorized_keys" in str(ei.value)


def test_key_file_problems(sshd, tmp_path):
    with pytest.raises(ConfigError, match="FSQ_SFTP_KEY_FILE"):
        SFTPSource.from_url(sshd.url(), sshd.settings(sftp_key_file=None))
    with pytest.raises(ConfigError, match="does not exist"):
        SFTPSource.from_url(sshd.url(), sshd.settings(sftp_key_file=str(tmp_path / "nope")))
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    with pytest.raises(ConfigError, match="cannot load SSH key"):
        SFTPSource.from_url(sshd.url(), sshd.settings(sftp_key_file=str(junk)))


def test_url_problems(sshd):
    from fsq.errors import SourceError, UsageError

    with pytest.raises(UsageError, match="password"):
        SFTPSource.from_url(f"sftp://u:secret@127.0.0.1:{sshd.port}/x", sshd.settings())
    with pytest.raises(UsageError, match="no path"):
        SFTPSource.from_url(f"sftp://u@127.0.0.1:{sshd.port}", sshd.settings())
    with pytest.raises(SourceError, match="does not exist"):
        SFTPSource.from_url(sshd.url(Path(sshd.root) / "missing"), sshd.settings())
    (sshd.root / "file").write_bytes(b"")
    with pytest.raises(SourceError, match="not a directory"):
        SFTPSource.from_url(sshd.url(Path(sshd.root) / "file"), sshd.settings())
