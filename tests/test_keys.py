"""Vault key files and passphrase intake (real Argon2id/scrypt, real files)."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import pty
import select
import stat
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fsq.errors import ConfigError, IntegrityError, UsageError
from fsq.quarantine import keys
from fsq.secrets import Secret, get_passphrase

PW = "correct horse battery"
PW2 = "tr0ub4dor &3"
REPO = Path(__file__).resolve().parent.parent


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def pair(tmp_path):
    pub, priv = tmp_path / "keys" / "vault.pub", tmp_path / "keys" / "vault.key"
    fp = keys.generate_keypair(pub, priv, Secret(PW))
    return pub, priv, fp


def _raw_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def test_generate_and_load(pair):
    pub_path, priv_path, fp = pair
    assert len(fp) == 19 and fp.count("-") == 3
    pub = keys.load_public_key(pub_path)
    priv = keys.load_private_key(priv_path, Secret(PW))
    assert keys.raw_public(priv) == keys.raw_public(pub)
    assert keys.fingerprint(pub) == fp
    assert fp in pub_path.read_text()
    assert keys.raw_public(keys.read_public_key_from_private_file(priv_path)) == \
        keys.raw_public(pub)


def test_private_key_never_in_clear(pair, tmp_path):
    _, priv_path, _ = pair
    raw = _raw_private(keys.load_private_key(priv_path, Secret(PW)))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert raw not in data
            assert base64.b64encode(raw) not in data
            assert raw.hex().encode() not in data
            assert PW.encode() not in data
    # no temp files left behind next to the keys
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["vault.key", "vault.pub"]


def test_wrong_passphrase_is_config_error(pair):
    _, priv_path, _ = pair
    with pytest.raises(ConfigError) as ei:
        keys.load_private_key(priv_path, Secret(PW2))
    e = ei.value
    assert e.exit_code == 2
    assert str(e) == f"wrong passphrase for vault private key {priv_path}"
    assert PW not in str(e) and PW2 not in str(e)
    assert "Secret" not in str(e)


def test_change_passphrase(pair):
    pub_path, priv_path, fp = pair
    before = json.loads(priv_path.read_text())
    keys.change_passphrase(priv_path, Secret(PW), Secret(PW2))
    after = json.loads(priv_path.read_text())
    assert after["kdf"]["salt"] != before["kdf"]["salt"]
    assert after["nonce"] != before["nonce"]
    assert after["public_key"] == before["public_key"] and after["fingerprint"] == fp
    assert _mode(priv_path) == 0o600
    assert keys.fingerprint(keys.load_private_key(priv_path, Secret(PW2))) == fp
    with pytest.raises(ConfigError, match="wrong passphrase"):
        keys.load_private_key(priv_path, Secret(PW))
    assert sorted(p.name for p in priv_path.parent.iterdir()) == ["vault.key", "vault.pub"]


def test_change_passphrase_with_wrong_old_changes_nothing(pair):
    _, priv_path, _ = pair
    before = priv_path.read_bytes()
    with pytest.raises(ConfigError, match="wrong passphrase"):
        keys.change_passphrase(priv_path, Secret(PW2), Secret("new"))
    with pytest.raises(ConfigError, match="empty"):
        keys.change_passphrase(priv_path, Secret(PW), Secret(""))
    assert priv_path.read_bytes() == before


@pytest.mark.parametrize("existing", ["both", "public", "private"])
def test_generate_refuses_to_overwrite(tmp_path, existing):
    pub, priv = tmp_path / "vault.pub", tmp_path / "vault.key"
    if existing in ("both", "public"):
        pub.write_text("old public")
    if existing in ("both", "private"):
        priv.write_text("old private")
    with pytest.raises(UsageError, match="already exists"):
        keys.generate_keypair(pub, priv, Secret(PW))
    assert (pub.read_text() if pub.exists() else None) == \
        ("old public" if existing in ("both", "public") else None)
    assert (priv.read_text() if priv.exists() else None) == \
        ("old private" if existing in ("both", "private") else None)


def test_file_modes(tmp_path):
    old = os.umask(0)  # even a permissive umask must not loosen the modes
    try:
        pub, priv = tmp_path / "a" / "b" / "vault.pub", tmp_path / "a" / "b" / "vault.key"
        keys.generate_keypair(pub, priv, Secret(PW))
    finally:
        os.umask(old)
    assert _mode(priv) == 0o600
    assert _mode(pub) == 0o644
    assert _mode(tmp_path / "a") == 0o700 and _mode(tmp_path / "a" / "b") == 0o700


def test_empty_passphrase_refused(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        keys.generate_keypair(tmp_path / "p", tmp_path / "k", Secret(""))
    assert not (tmp_path / "k").exists() and not (tmp_path / "p").exists()


def test_weak_kdf_warns_and_is_recorded(tmp_path, capfd):
    assert os.environ["FSQ_TESTONLY_WEAKEN_KDF"] == "1"  # set by conftest for every test
    keys.generate_keypair(tmp_path / "p", tmp_path / "k", Secret(PW))
    err = capfd.readouterr().err
    assert "WARNING: FSQ_TESTONLY_WEAKEN_KDF is set: key derivation is weak" in err
    kdf = json.loads((tmp_path / "k").read_text())["kdf"]
    weak = keys.WEAK_ARGON2 if kdf["name"] == "argon2id" else keys.WEAK_SCRYPT
    assert {k: v for k, v in kdf.items() if k not in ("name", "salt")} == weak


def test_strong_kdf_without_the_test_switch(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("FSQ_TESTONLY_WEAKEN_KDF")
    fp = keys.generate_keypair(tmp_path / "p", tmp_path / "k", Secret(PW))
    kdf = json.loads((tmp_path / "k").read_text())["kdf"]
    if keys.argon2_available():
        assert kdf["name"] == "argon2id"
        assert kdf["memory_kib"] == 256 * 1024 and kdf["iterations"] == 3 and kdf["lanes"] == 4
    else:  # pragma: no cover - depends on the installed cryptography
        assert kdf["name"] == "scrypt" and kdf["n"] == 2 ** 17
    assert len(base64.b64decode(kdf["salt"])) == 16
    assert keys.fingerprint(keys.load_private_key(tmp_path / "k", Secret(PW))) == fp
    assert "WEAKEN_KDF" not in capfd.readouterr().err


def test_weak_kdf_only_for_exactly_1(monkeypatch, capfd):
    from fsq import testonly
    monkeypatch.setenv("FSQ_TESTONLY_WEAKEN_KDF", "0")
    assert testonly.weaken_kdf() is False
    monkeypatch.setenv("FSQ_TESTONLY_WEAKEN_KDF", "1")
    assert testonly.weaken_kdf() is True
    assert testonly.weaken_kdf() is True
    assert capfd.readouterr().err.count("FSQ_TESTONLY_WEAKEN_KDF is set") == 2


def _edit(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[len(raw) // 2] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "public_key"])
def test_tampered_private_key_is_integrity_error(pair, field):
    _, priv_path, _ = pair

    def tamper(doc):
        doc[field] = _flip_b64(doc[field])
        if field == "public_key":  # keep it self-consistent, so only the AEAD can notice
            doc["fingerprint"] = keys.fingerprint(base64.b64decode(doc["public_key"]))

    _edit(priv_path, tamper)
    with pytest.raises(IntegrityError) as ei:
        keys.load_private_key(priv_path, Secret(PW))
    assert ei.value.exit_code == 4 and PW not in str(ei.value)


@pytest.mark.parametrize("tamper", [
    lambda d: d.update(fingerprint="0000-0000-0000-0000"),
    lambda d: d.update(extra="x"),
    lambda d: d["kdf"].update(iterations=10 ** 6),
    lambda d: d["kdf"].update(name="pbkdf2"),
    lambda d: d.update(ciphertext="not base64!"),
], ids=["fingerprint", "extra-field", "absurd-cost", "unknown-kdf", "bad-base64"])
def test_malformed_private_key_is_integrity_error(pair, tamper):
    _, priv_path, _ = pair
    _edit(priv_path, tamper)
    with pytest.raises(IntegrityError):
        keys.load_private_key(priv_path, Secret(PW))


def test_altered_kdf_salt_never_opens(pair):
    """Changing the salt or costs changes the derived key: indistinguishable from a wrong
    passphrase (documented), and certainly never a successful load."""
    _, priv_path, _ = pair
    _edit(priv_path, lambda d: d["kdf"].update(salt=_flip_b64(d["kdf"]["salt"])))
    with pytest.raises(ConfigError, match="wrong passphrase"):
        keys.load_private_key(priv_path, Secret(PW))


def test_damaged_json_and_wrong_files(pair, tmp_path):
    pub_path, priv_path, _ = pair
    priv_path.write_bytes(priv_path.read_bytes()[:-20])
    with pytest.raises(IntegrityError, match="damaged"):
        keys.load_private_key(priv_path, Secret(PW))
    with pytest.raises(ConfigError, match="looks like the public key"):
        keys.load_private_key(pub_path, Secret(PW))
    with pytest.raises(ConfigError, match="fsq init"):
        keys.load_private_key(tmp_path / "missing.key", Secret(PW))
    (tmp_path / "future.key").write_text(json.dumps({"format": "fsq-vault-private-key",
                                                     "version": 9}))
    with pytest.raises(ConfigError, match="upgrade fsq"):
        keys.load_private_key(tmp_path / "future.key", Secret(PW))


def test_load_public_key_errors(pair, tmp_path):
    pub_path, priv_path, _ = pair
    with pytest.raises(ConfigError, match="run `fsq init`"):
        keys.load_public_key(tmp_path / "nope.pub")
    bad = tmp_path / "bad.pub"
    bad.write_text("hello world\n")
    with pytest.raises(ConfigError, match="not an fsq vault public key.*fsq init"):
        keys.load_public_key(bad)
    bad.write_text("fsq-vault-public-key v1 AAAA 0000-0000-0000-0000\n")
    with pytest.raises(ConfigError, match="malformed"):
        keys.load_public_key(bad)
    with pytest.raises(ConfigError, match="private"):
        keys.load_public_key(priv_path)
    # an edited key no longer matches its fingerprint
    text = pub_path.read_text()
    magic, version, b64, fp = text.splitlines()[-1].split()
    other = base64.b64encode(bytes(32)[:-1] + b"\x09").decode()
    bad.write_text(f"{magic} {version} {other} {fp}\n")
    with pytest.raises(IntegrityError, match="altered"):
        keys.load_public_key(bad)


# --- fsq.secrets ---------------------------------------------------------------------------------

def test_secret_hides_its_value():
    s = Secret("hunter2")
    assert repr(s) == str(s) == f"{s}" == "Secret(***)"
    assert "hunter2" not in repr([s, {"k": s}])
    assert s.reveal() == "hunter2" and s.reveal_bytes() == b"hunter2"
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_env_and_file_is_ambiguous(tmp_path):
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    with pytest.raises(ConfigError, match="ambiguous") as ei:
        get_passphrase(env="from-env", file=str(f), prompt=True)
    assert "from-env" not in str(ei.value) and "from-file" not in str(ei.value)


def test_no_source_names_the_three_ways():
    with pytest.raises(ConfigError) as ei:
        get_passphrase(env=None, file=None, prompt=False)
    msg = str(ei.value)
    assert "FSQ_VAULT_PASSPHRASE" in msg and "--passphrase-file" in msg and "terminal" in msg
    # pytest's stdin is not a terminal: prompt=True must not try to read it
    with pytest.raises(ConfigError):
        get_passphrase(env=None, file=None, prompt=True)


def test_env_source_and_empty():
    assert get_passphrase(env="pw from env", file=None, prompt=False).reveal() == "pw from env"
    with pytest.raises(ConfigError, match="empty"):
        get_passphrase(env="", file=None, prompt=False)


def test_file_source(tmp_path, caplog):
    f = tmp_path / "pw"
    f.write_bytes(b"  spaced pass \r\nsecond line\n")
    f.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        s = get_passphrase(env=None, file=str(f), prompt=False)
    assert s.reveal() == "  spaced pass "
    assert not caplog.records
    f.write_bytes(b"no-newline")
    assert get_passphrase(env=None, file=str(f), prompt=False).reveal() == "no-newline"
    f.write_bytes(b"\nsecond line only\n")
    with pytest.raises(ConfigError, match="empty"):
        get_passphrase(env=None, file=str(f), prompt=False)
    with pytest.raises(ConfigError, match="cannot read"):
        get_passphrase(env=None, file=str(tmp_path / "missing"), prompt=False)


def test_group_readable_file_warns_without_revealing(tmp_path, caplog):
    f = tmp_path / "pw"
    f.write_text("open-secret\n")
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert get_passphrase(env=None, file=str(f), prompt=False).reveal() == "open-secret"
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    assert all("open-secret" not in r.getMessage() for r in caplog.records)


_PROMPT_CHILD = """
import sys
from fsq.errors import ConfigError
from fsq.secrets import get_passphrase
try:
    s = get_passphrase(env=None, file=None, prompt=True, confirm=True)
    print("GOT", len(s.reveal()), s.reveal() == "typed-secret", flush=True)
except ConfigError as e:
    print("ERR", e, flush=True)
"""


def _run_on_pty(answers: list[str]) -> str:
    """Run the prompt in a child whose controlling terminal is a pty; answer its prompts."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-c", _PROMPT_CHILD])
    out = b""
    deadline = time.monotonic() + 20
    answered = 0
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                # Answer each prompt once, only after it appeared (getpass has turned echo off
                # and flushed pending input by then).
                if answered < len(answers) and out.count(b"passphrase: ") > answered:
                    os.write(fd, answers[answered].encode() + b"\n")
                    answered += 1
    finally:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    return out.decode(errors="replace")


def test_prompt_on_a_terminal_with_confirmation():
    out = _run_on_pty(["typed-secret", "typed-secret"])
    assert "Enter vault passphrase:" in out and "Repeat vault passphrase:" in out
    assert "GOT 12 True" in out
    assert out.count("typed-secret") == 0  # not echoed


def test_prompt_confirmation_mismatch():
    out = _run_on_pty(["typed-secret", "typo-secret"])
    assert "ERR the two vault passphrase entries differ" in out
    assert "typo-secret" not in out
