"""State database safety on the real CLI (`python -m fsq`): read-only commands refuse a missing
or foreign file instead of creating one, and a damaged ledger is an integrity failure (exit 4)
everywhere -- never "internal error", never "audit log intact"."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fsq.ledger import audit
from fsq.ledger.db import connect

PASS = "correct horse battery staple"
READ_ONLY = [["incidents"], ["flagged"], ["audit", "verify"], ["audit", "log"], ["audit", "head"],
             ["incident", "show", "1"], ["hold", "list"], ["report", "1"], ["recover"]]


@pytest.fixture
def ledger(tmp_path, fsq_proc) -> Path:
    """A real fsq database from `fsq init`, with 3000 objects and 20 audit events, so that a
    page in the middle holds table data."""
    pw = tmp_path / "pw"
    pw.write_text(PASS)
    r = fsq_proc(["init", "--passphrase-file", str(pw)])
    assert r.returncode == 0, r.stderr
    c = connect("fsq.db")
    c.execute("BEGIN")
    for i in range(3000):
        c.execute("INSERT INTO objects(source,key,size,status,first_seen,last_seen) "
                  "VALUES('file:///x',?,?,'clean','t','t')", (f"k/{i:06d}.png", i))
    c.execute("COMMIT")
    for i in range(20):
        audit.append(c, "test.event", f"obj:{i}", {"i": i})
    c.close()  # last connection: WAL checkpointed into the main file
    assert not Path("fsq.db-wal").exists() or Path("fsq.db-wal").stat().st_size == 0
    return Path("fsq.db").resolve()


def _stat(p: Path):
    return (p.stat().st_size, p.read_bytes()) if p.exists() else None


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: " ".join(a))
def test_read_only_command_refuses_missing_db_and_creates_nothing(args, fsq_proc, tmp_path):
    r = fsq_proc([*args, "--db", "typo.db"], env={"FSQ_SOURCE": f"file://{tmp_path}"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "fsq init" in r.stderr and "does not exist" in r.stderr
    assert not Path("typo.db").exists()
    assert "internal error" not in r.stderr


@pytest.mark.parametrize("content", [b"x", b"hello, I am a text file\n" * 10, b"\0" * 4096],
                         ids=["1-byte", "text", "zeros"])
@pytest.mark.parametrize("args", [["incidents"], ["init"], ["audit", "verify"]],
                         ids=lambda a: " ".join(a))
def test_non_sqlite_file_is_refused_exit_2_and_left_untouched(content, args, fsq_proc, tmp_path):
    """Not SQLite and no trace of fsq's schema: a configuration error (exit 2), not damage."""
    f = Path("notadb.db")
    f.write_bytes(content)
    pw = tmp_path / "pw"
    pw.write_text(PASS)
    extra = ["--passphrase-file", str(pw)] if args == ["init"] else []
    r = fsq_proc([*args, "--db", str(f), *extra])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "not an fsq state database" in r.stderr
    assert f.read_bytes() == content
    assert not Path("notadb.db-wal").exists()


def test_foreign_sqlite_database_is_never_migrated(fsq_proc, tmp_path):
    other = sqlite3.connect("other.db")
    other.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, filename TEXT)")
    other.commit()
    other.close()
    before = Path("other.db").read_bytes()
    pw = tmp_path / "pw"
    pw.write_text(PASS)
    for args in (["incidents"], ["init", "--passphrase-file", str(pw)]):
        r = fsq_proc([*args, "--db", "other.db"])
        assert r.returncode == 2, r.stderr
        assert "not an fsq one" in r.stderr
    assert Path("other.db").read_bytes() == before


def test_empty_file_refused_by_readers_initialised_by_init(fsq_proc, tmp_path):
    Path("empty.db").write_bytes(b"")
    r = fsq_proc(["incidents", "--db", "empty.db"])
    assert r.returncode == 2 and "empty" in r.stderr and "fsq init" in r.stderr
    pw = tmp_path / "pw"
    pw.write_text(PASS)
    r = fsq_proc(["init", "--db", "empty.db", "--passphrase-file", str(pw)])
    assert r.returncode == 0, r.stderr
    assert fsq_proc(["incidents", "--db", "empty.db"]).returncode == 0


def _damage_header_magic(p: Path) -> None:
    with open(p, "r+b") as fh:
        fh.write(b"\0" * 16)


def _damage_page_size(p: Path) -> None:
    with open(p, "r+b") as fh:  # magic intact, page size 7: invalid
        fh.seek(16)
        fh.write(b"\x00\x07")


def _damage_middle_pages(p: Path) -> None:
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.seek((size // 4096 // 2) * 4096)
        fh.write(bytes((i * 151 + 7) % 256 for i in range(3 * 4096)))


def _damage_one_cell_pointer(p: Path) -> None:
    """A single 2-byte change in a leaf page of `objects`: the subtle kind of damage."""
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        page = (size // 4096 // 2) * 4096
        fh.seek(page)
        kind = fh.read(1)
        assert kind in (b"\x0d", b"\x05", b"\x0a", b"\x02"), kind  # a b-tree page
        fh.seek(page + 8 + (4 if kind in (b"\x05", b"\x02") else 0))
        fh.write(b"\xff\xf0")  # first cell pointer past the end of the page


DAMAGE = {"header-magic": _damage_header_magic, "page-size": _damage_page_size,
          "middle-pages": _damage_middle_pages, "cell-pointer": _damage_one_cell_pointer}


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("args", [["incidents"], ["audit", "verify"], ["audit", "log"],
                                  ["flagged", "--json"]], ids=lambda a: " ".join(a))
def test_damaged_database_is_an_integrity_failure(ledger, how, args, fsq_proc):
    r = fsq_proc(["audit", "verify"])
    assert r.returncode == 0 and "intact" in r.stdout, r.stderr
    DAMAGE[how](ledger)
    r = fsq_proc(args)
    assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
    assert "damaged" in r.stderr and "backup" in r.stderr
    assert "internal error" not in r.stderr and "intact" not in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_damage_met_mid_command_exits_4_not_internal_error(ledger):
    """Damage quick_check did not see (it ran before the damage): the CLI's last line of
    defence maps SQLite's "malformed" to exit 4."""
    from click.testing import CliRunner

    from fsq.cli.main import cli
    from fsq.ledger import db as dbmod
    dbmod._checked.add(str(ledger))  # as if checked at start, before the damage
    size = ledger.stat().st_size
    with open(ledger, "r+b") as fh:  # the audit rows, appended last, are in the last pages
        fh.seek(size - 3 * 4096)
        fh.write(b"\xa5" * 3 * 4096)
    r = CliRunner().invoke(cli, ["audit", "log", "--db", str(ledger)], catch_exceptions=True)
    dbmod._checked.discard(str(ledger))
    assert r.exit_code == 4, r.output
    assert "damaged" in r.output and "internal error" not in r.output
