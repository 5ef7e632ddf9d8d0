"""Secrets never leave (issue 12): one set of secret shapes, every output path, grep.

The shapes: a URL password, ``?password=`` / ``sslpassword=`` query parameters, a libpq keyword
DSN, ``://`` inside the vault passphrase, the serve token, a pict-rs API key, and an SFTP URL
with a password. The paths: ``config show`` (text and --json), stdout and stderr of commands
that fail (with and without --debug), ``--json`` output, reports, the state database file
(with the audit rows in it). Everything runs as real ``python -m fsq`` processes.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from urllib.parse import quote

import pytest

from fsq.secrets import mask_secrets, register_secret, register_url_secret
from fsq.synth import make_store
from tests.fixtures.images import run_proc

SECRETS = ["UrlPassw0rdX1", "QueryPassw0rdY2", "SslPassw0rdQ3", "KwPassw0rdZ4",
           "pass://Phr4se@S3cret5", "tok://Serv3Token6", "api://K3yValue7", "SftpPassw0rd8"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shapes(variant: str) -> dict[str, str]:
    port = closed_port()
    env = {"FSQ_VAULT_PASSPHRASE": "pass://Phr4se@S3cret5",
           "FSQ_SERVE_TOKEN": "tok://Serv3Token6",
           "FSQ_PICTRS_API_KEY": "api://K3yValue7",
           "FSQ_PICTRS_URL": f"http://127.0.0.1:{port}"}
    if variant == "url":
        env["FSQ_LEMMY_DATABASE_URL"] = (f"postgresql://lemmy:UrlPassw0rdX1@127.0.0.1:{port}/"
                                         "lemmy?sslpassword=SslPassw0rdQ3")
        env["FSQ_PICTRS_DATABASE_URL"] = (f"postgresql://pictrs@127.0.0.1:{port}/pictrs"
                                          "?password=QueryPassw0rdY2")
    else:
        env["FSQ_LEMMY_DATABASE_URL"] = (f"host=127.0.0.1 port={port} dbname=lemmy user=lemmy "
                                         "password=KwPassw0rdZ4")
        env["FSQ_PICTRS_DATABASE_URL"] = (f"host=127.0.0.1 port={port} dbname=pictrs "
                                          "password='KwPassw0rdZ4'")
    return env


def leaks(text: str) -> list[str]:
    forms = set()
    for s in SECRETS:
        forms |= {s, quote(s, safe=""), s.replace("/", "\\/")}
    return sorted(f for f in forms if f in text)


def test_mask_secrets_shapes():
    register_secret("pass://Phr4se@S3cret5")
    register_url_secret("host=h password=KwPassw0rdZ4")
    cases = {
        "postgresql://lemmy:UrlPassw0rdX1@h:5432/lemmy": "postgresql://lemmy:***@h:5432/lemmy",
        "postgresql://p@h/db?password=QueryPassw0rdY2&sslmode=require":
            "postgresql://p@h/db?password=***&sslmode=require",
        "postgresql://p@h/db?sslpassword=SslPassw0rdQ3": "postgresql://p@h/db?sslpassword=***",
        "host=h password=KwPassw0rdZ4 dbname=x": "host=h password=*** dbname=x",
        "host=h password='two words'": "host=h password=***",
        "it is pass://Phr4se@S3cret5.": "it is ***.",
        "https://h/x?token=abc&key=def&ok=1": "https://h/x?token=***&key=***&ok=1",
        "sftp://u:SftpPassw0rd8@h:22/files": "sftp://u:***@h:22/files",
    }
    for raw, want in cases.items():
        assert mask_secrets(raw) == want, raw
    assert mask_secrets("nothing secret at postgresql://h/db") == \
        "nothing secret at postgresql://h/db"


@pytest.mark.parametrize("variant", ["url", "keyword"])
def test_no_secret_in_any_output(variant, tmp_path, _isolated_env):
    work = _isolated_env
    env = shapes(variant)
    root = tmp_path / "pictrs" / "files"
    keys = make_store(root, 1, seed=2, megapixels=(0.01, 0.02))
    known = tmp_path / "known.txt"
    known.write_text(hashlib.sha256((root / keys[0]).read_bytes()).hexdigest() + "\n")
    outputs: list[str] = []

    def run(*args: str, code: int | None = None) -> None:
        p = run_proc(list(args), env=env, cwd=str(work), timeout=120)
        outputs.append(f"{p.stdout}\n{p.stderr}")  # (not the argv: it holds the secrets)
        if code is not None:
            assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)

    run("init", code=0)
    run("scan", "--all", "--source", f"file://{root}", "--hash-list", str(known), code=0)
    run("config", "show", code=0)
    run("config", "show", "--json", code=0)
    for debug in ([], ["--debug"]):
        run(*debug, "report", "1", code=0)          # both databases unreachable: warnings
        run(*debug, "report", "1", "--json", code=0)
        run(*debug, "scan", "--all", "--source",
            f"sftp://u:SftpPassw0rd8@127.0.0.1:{closed_port()}/files", code=2)
        run(*debug, "serve", "--listen", "not-an-address", code=2)
        run(*debug, "purge", "--after-clearance", "--json")
        run(*debug, "incident", "show", "1", "--json", code=0)
        run(*debug, "audit", "log", "--json", code=0)
        run(*debug, "clear", "1", "--by", "x", "--reason", "y", "--passphrase-file",
            str(tmp_path / "nope"), code=2)       # ambiguous passphrase: an error line
    text = "\n".join(outputs)
    assert "FSQ_LEMMY_DATABASE_URL" in text and "Traceback" in text   # the paths ran
    assert "***" in text
    assert leaks(text) == [], leaks(text)

    reports = list((work / "reports").glob("*.html"))
    assert reports
    for r in reports:
        html = r.read_text()
        assert leaks(html) == [], (r, leaks(html))
        assert "postgresql://" not in html and "password=" not in html  # no connection string
    for f in work.glob("fsq.db*"):        # the state database, its WAL: audit rows included
        raw = f.read_bytes().decode("utf-8", "replace")
        assert leaks(raw) == [], (f, leaks(raw))
    for f in Path(work / "keys").iterdir():
        assert leaks(f.read_bytes().decode("utf-8", "replace")) == []


def test_log_lines_are_masked(capsys, monkeypatch):
    import logging

    from fsq.cli.common import setup_logging
    register_secret("LogS3cretValue")
    monkeypatch.setattr(logging.getLogger("fsq"), "handlers", [])  # a fresh process's logging
    setup_logging("info")
    logging.getLogger("fsq.test").warning("connecting with %s to postgresql://u:%s@h/db",
                                          "LogS3cretValue", "Pw0rdInUrl")
    err = capsys.readouterr().err
    assert "LogS3cretValue" not in err and "Pw0rdInUrl" not in err and "u:***@h" in err
