"""Sealing format: round trips, confidentiality, and that every kind of tampering is an
IntegrityError naming the entry (real crypto throughout)."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct

import pytest

from fsq.errors import IntegrityError, UsageError
from fsq.quarantine import keys, seal
from fsq.quarantine.seal import new_entry_id, open_metadata, open_sealed
from fsq.secrets import Secret

CANARY = b"FSQ-PLAINTEXT-CANARY-7f3a"


@pytest.fixture
def keypair(tmp_path):
    pub, priv = tmp_path / "keys" / "vault.pub", tmp_path / "keys" / "vault.key"
    keys.generate_keypair(pub, priv, Secret("correct horse"))
    return keys.load_public_key(pub), keys.load_private_key(priv, Secret("correct horse"))


def _meta(**extra):
    m = {"original_key": "files/abc.png", "source": "file:///srv/pictrs/files",
         "sha256": "00" * 32, "md5": "11" * 16, "size": 123, "media_type": "image/png",
         "times": {"mtime": "2024-05-01T00:00:00Z"}, "verdict": {"label": "flagged"}}
    m.update(extra)
    return m


@pytest.mark.parametrize("content", [b"", b"x", bytes(range(256)) * 17],
                         ids=["empty", "one-byte", "small"])
def test_round_trip(keypair, content):
    pub, priv = keypair
    eid = new_entry_id()
    meta = _meta(note="ünïcødé ✓", nested={"b": 1, "a": [1, 2.5, None, True]})
    s = seal.seal(eid, content, meta, pub)
    got_meta, got = open_sealed(eid, s.blob, s.wrapped_key, priv)
    assert got == content and type(got) is bytes
    assert got_meta == meta
    assert open_metadata(eid, s.blob, s.wrapped_key, priv) == meta
    assert s.entry_id == eid
    assert s.blob_sha256 == hashlib.sha256(s.blob).hexdigest()
    assert s.key_sha256 == hashlib.sha256(s.wrapped_key).hexdigest()
    assert len(s.wrapped_key) == seal.KEY_OBJECT_LEN


def test_round_trip_20mb(keypair):
    pub, priv = keypair
    content = os.urandom(20 * 1024 * 1024)
    eid = new_entry_id()
    s = seal.seal(eid, content, _meta(), pub)
    meta, got = open_sealed(eid, s.blob, s.wrapped_key, priv)
    assert got == content
    # Overhead is the fixed layout plus the metadata: content is not padded or copied twice.
    assert len(s.blob) == 60 + len(seal.canonical_json(_meta())) + 16 + len(content) + 16


def test_entry_ids_are_random_hex():
    ids = {new_entry_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)


def test_plaintext_never_appears(keypair):
    pub, _ = keypair
    content = b"\x89PNG..." + CANARY * 3 + b"...IEND"
    meta = _meta(original_key="files/" + CANARY.decode(), comment=CANARY.decode())
    s = seal.seal(new_entry_id(), content, meta, pub)
    for obj in (s.blob, s.wrapped_key):
        assert CANARY not in obj
        assert CANARY[:12] not in obj
        assert b"files/" not in obj and b"sha256" not in obj and b"image/png" not in obj


def test_metadata_is_canonical():
    assert seal.canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    with pytest.raises(ValueError):
        seal.canonical_json({"x": float("nan")})


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


def _blob_positions(s, meta_len: int) -> dict[str, int]:
    m = meta_len + 16
    return {"magic": 0, "version": 4, "kind": 5, "suite": 6, "reserved": 7, "entry-id": 8,
            "meta-nonce": 24, "meta-len": 36, "meta-ct": 40, "meta-tag": 40 + m - 1,
            "content-nonce": 40 + m, "content-len": 52 + m, "content-ct": 60 + m,
            "content-tag": len(s.blob) - 1}


KEY_POSITIONS = {"magic": 0, "version": 4, "kind": 5, "entry-id": 20, "recipient": 24,
                 "ephemeral": 56, "nonce": 88, "wrapped": 100, "tag": 147}


def test_flipped_byte_anywhere_in_blob_fails(keypair):
    pub, priv = keypair
    eid, meta = new_entry_id(), _meta()
    s = seal.seal(eid, b"content " * 100, meta, pub)
    positions = _blob_positions(s, len(seal.canonical_json(meta)))
    assert struct.unpack(">I", s.blob[36:40])[0] == len(seal.canonical_json(meta)) + 16
    for where, pos in positions.items():
        bad = _flip(s.blob, pos)
        with pytest.raises(IntegrityError, match=eid):
            open_sealed(eid, bad, s.wrapped_key, priv)
        if pos < positions["content-nonce"]:
            with pytest.raises(IntegrityError, match=eid):
                open_metadata(eid, bad, s.wrapped_key, priv)
    open_sealed(eid, s.blob, s.wrapped_key, priv)  # the original still opens


def test_flipped_byte_anywhere_in_key_fails(keypair):
    pub, priv = keypair
    eid = new_entry_id()
    s = seal.seal(eid, b"content", _meta(), pub)
    for where, pos in KEY_POSITIONS.items():
        bad = _flip(s.wrapped_key, pos)
        with pytest.raises(IntegrityError, match=eid):
            open_sealed(eid, s.blob, bad, priv)
        with pytest.raises(IntegrityError, match=eid):
            open_metadata(eid, s.blob, bad, priv)


@pytest.mark.parametrize("which", ["blob", "key"])
@pytest.mark.parametrize("how", ["cut-one", "cut-half", "empty", "append"])
def test_truncated_or_extended_fails(keypair, which, how):
    pub, priv = keypair
    eid = new_entry_id()
    s = seal.seal(eid, b"some content", _meta(), pub)
    data = s.blob if which == "blob" else s.wrapped_key
    data = {"cut-one": data[:-1], "cut-half": data[:len(data) // 2], "empty": b"",
            "append": data + b"\0"}[how]
    blob, key = (data, s.wrapped_key) if which == "blob" else (s.blob, data)
    with pytest.raises(IntegrityError, match=eid):
        open_sealed(eid, blob, key, priv)


def test_swapped_key_objects_fail(keypair):
    pub, priv = keypair
    a, b = new_entry_id(), new_entry_id()
    sa = seal.seal(a, b"content A", _meta(), pub)
    sb = seal.seal(b, b"content B", _meta(), pub)
    with pytest.raises(IntegrityError, match=a):
        open_sealed(a, sa.blob, sb.wrapped_key, priv)
    with pytest.raises(IntegrityError, match=b):
        open_sealed(b, sb.blob, sa.wrapped_key, priv)
    with pytest.raises(IntegrityError, match=a):
        open_sealed(a, sb.blob, sa.wrapped_key, priv)
    # Even with the header rewritten to the right id, B's key object does not open A's entry:
    # the entry id is bound into the key-wrapping KDF and the wrap's associated data.
    forged = sb.wrapped_key[:8] + bytes.fromhex(a) + sb.wrapped_key[24:]
    with pytest.raises(IntegrityError, match=a):
        open_sealed(a, sa.blob, forged, priv)


def test_renamed_blob_fails(keypair):
    """A blob whose header is edited to another id does not open under that id."""
    pub, priv = keypair
    a, b = new_entry_id(), new_entry_id()
    sa = seal.seal(a, b"content A", _meta(), pub)
    sb = seal.seal(b, b"content B", _meta(), pub)
    blob = sb.blob[:8] + bytes.fromhex(a) + sb.blob[24:]
    with pytest.raises(IntegrityError, match=a):
        open_sealed(a, blob, sa.wrapped_key, priv)


def test_content_is_bound_to_its_metadata(keypair):
    """Same entry, same data key (a test-only seam), different metadata: splicing the content
    section of one onto the metadata of the other must fail (content AAD = SHA-256 of the
    metadata), while each original opens."""
    pub, priv = keypair
    eid, dk = new_entry_id(), os.urandom(32)
    m1, m2 = _meta(original_key="files/one.png"), _meta(original_key="files/two.png")
    s1 = seal._seal(eid, b"content one", m1, pub, dk)
    s2 = seal._seal(eid, b"content two", m2, pub, dk)
    assert open_sealed(eid, s1.blob, s1.wrapped_key, priv)[1] == b"content one"
    assert open_sealed(eid, s2.blob, s2.wrapped_key, priv)[1] == b"content two"
    end1 = 40 + len(seal.canonical_json(m1)) + 16
    end2 = 40 + len(seal.canonical_json(m2)) + 16
    spliced = s1.blob[:end1] + s2.blob[end2:]
    assert open_metadata(eid, spliced, s1.wrapped_key, priv) == m1
    with pytest.raises(IntegrityError, match="content does not authenticate"):
        open_sealed(eid, spliced, s1.wrapped_key, priv)


def test_wrong_entry_id_fails(keypair):
    pub, priv = keypair
    eid, other = new_entry_id(), new_entry_id()
    s = seal.seal(eid, b"content", _meta(), pub)
    with pytest.raises(IntegrityError, match=other):
        open_sealed(other, s.blob, s.wrapped_key, priv)
    for bad in ("../" + eid[3:], eid.upper(), eid[:-1], ""):
        with pytest.raises(IntegrityError):
            open_sealed(bad, s.blob, s.wrapped_key, priv)
    with pytest.raises(UsageError):
        seal.seal("../etc/passwd", b"x", {}, pub)


def test_wrong_private_key_fails(keypair, tmp_path):
    pub, _ = keypair
    keys.generate_keypair(tmp_path / "o.pub", tmp_path / "o.key", Secret("other"))
    other = keys.load_private_key(tmp_path / "o.key", Secret("other"))
    eid = new_entry_id()
    s = seal.seal(eid, b"content", _meta(), pub)
    with pytest.raises(IntegrityError, match=rf"{eid}.*sealed to vault key "
                                             rf"{keys.fingerprint(pub)}"):
        open_sealed(eid, s.blob, s.wrapped_key, other)
    # Pretending the entry was sealed to the other key does not help either.
    forged = s.wrapped_key[:24] + keys.raw_public(other) + s.wrapped_key[56:]
    with pytest.raises(IntegrityError, match="cannot unwrap"):
        open_sealed(eid, s.blob, forged, other)


def test_unknown_version_fails(keypair):
    pub, priv = keypair
    eid = new_entry_id()
    s = seal.seal(eid, b"content", _meta(), pub)
    blob = s.blob[:4] + b"\x02" + s.blob[5:]
    key = s.wrapped_key[:4] + b"\x02" + s.wrapped_key[5:]
    with pytest.raises(IntegrityError, match="version 2"):
        open_sealed(eid, blob, key, priv)


def test_sealing_needs_only_the_public_key_file(tmp_path):
    """The scanner host has vault.pub only; the private key is elsewhere (offline)."""
    keys.generate_keypair(tmp_path / "k" / "vault.pub", tmp_path / "k" / "vault.key",
                          Secret("pw"))
    scanner = tmp_path / "scanner"
    scanner.mkdir()
    shutil.copy(tmp_path / "k" / "vault.pub", scanner / "vault.pub")
    offline = tmp_path / "offline"
    offline.mkdir()
    shutil.move(tmp_path / "k" / "vault.key", offline / "vault.key")
    shutil.rmtree(tmp_path / "k")

    eid = new_entry_id()
    s = seal.seal(eid, CANARY, _meta(), keys.load_public_key(scanner / "vault.pub"))
    priv = keys.load_private_key(offline / "vault.key", Secret("pw"))
    assert open_sealed(eid, s.blob, s.wrapped_key, priv) == (_meta(), CANARY)


def test_open_metadata_needs_no_content_section(keypair):
    pub, priv = keypair
    eid, meta = new_entry_id(), _meta()
    s = seal.seal(eid, os.urandom(100_000), meta, pub)
    prefix = s.blob[:40 + len(seal.canonical_json(meta)) + 16]
    assert open_metadata(eid, prefix, s.wrapped_key, priv) == meta
    with pytest.raises(IntegrityError, match="truncated"):
        open_sealed(eid, prefix, s.wrapped_key, priv)


def test_two_seals_of_the_same_input_differ(keypair):
    pub, _ = keypair
    eid = new_entry_id()
    a = seal.seal(eid, b"same", _meta(), pub)
    b = seal.seal(eid, b"same", _meta(), pub)
    assert a.blob != b.blob and a.wrapped_key != b.wrapped_key
    assert a.blob[24:36] != a.blob[40 + len(seal.canonical_json(_meta())) + 16:][:12]
