"""Test isolation (STYLE.md #8): no test sees the machine's FSQ_* settings, a real home cache,
or the working directory of the checkout. Real servers (PostgreSQL, sshd, moto) come from the
fixture plugins listed below; each starts its server on loopback and stops it."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.images",
    "tests.fixtures.model",
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.sshd",
]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("FSQ_"):
            monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    # Cheap key derivation for tests; fsq warns on stderr whenever this is set.
    monkeypatch.setenv("FSQ_TESTONLY_WEAKEN_KDF", "1")
    yield work
