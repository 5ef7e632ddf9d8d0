"""Deployment files: the Dockerfile (parsed: no image can be built here without a registry),
the docker-compose snippet, and the systemd units (`systemd-analyze verify` where systemd's
tools are installed). Each check names the mistake it would catch."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import click
import pytest

from fsq.cli.main import cli
from fsq.config import SETTINGS, load_settings
from tests.fixtures.images import REPO

UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
SECRET_ENVS = {s.env for s in SETTINGS if s.secret}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        ins, _, args = buf.strip().partition(" ")
        out.append((ins.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continuation line"
    return out


def stages(ins: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    st: list[list[tuple[str, str]]] = []
    for i, a in ins:
        if i == "FROM":
            st.append([])
        if st:
            st[-1].append((i, a))
    return st


def dockerignore() -> list[str]:
    return [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch(path, p.rstrip("/")) or path.startswith(p) for p in patterns)


def check_fsq_args(args: list[str]) -> None:
    """The words after `fsq` name a real command and real options of it."""
    cmd: click.Command = cli
    words = list(args)
    while isinstance(cmd, click.Group) and words and not words[0].startswith("-"):
        name = words.pop(0)
        assert name in cmd.commands, f"fsq has no command {name!r}"
        cmd = cmd.commands[name]
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    for w in words:
        if w.startswith("--"):
            assert w.split("=", 1)[0] in opts, f"{cmd.name} has no option {w}"


def test_dockerfile_builds_a_cpu_image_as_an_unprivileged_user():
    ins = dockerfile()
    st = stages(ins)
    assert len(st) == 2, "a build stage and a slim runtime stage"
    build, final = st
    # CPU wheels by default, installed before fsq so pip never pulls the CUDA build
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    runs = [a for i, a in build if i == "RUN"]
    torch_at = next(n for n, r in enumerate(runs) if "--index-url" in r and " torch" in r)
    fsq_at = next(n for n, r in enumerate(runs) if '"/src[all]"' in r)
    assert torch_at < fsq_at
    extras = re.findall(r"^(\w+) =", (REPO / "setup.cfg").read_text(), re.M)
    assert "all" in extras
    # runtime: not root, fsq as the entry point, the serve port exposed
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(i == "RUN" and "useradd" in a and users[-1] in a for i, a in final)
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["fsq"]
    env = {}
    for i, a in final:
        if i == "ENV":
            for part in shlex.split(a):
                k, _, v = part.partition("=")
                env[k] = v
    fsq_env = {k: v for k, v in env.items() if k.startswith("FSQ_")}
    assert not SECRET_ENVS & set(fsq_env), "no secret may be baked into an image"
    load_settings(environ=fsq_env, cwd=Path("/nonexistent"))  # unknown/malformed: ConfigError
    port = env["FSQ_SERVE_LISTEN"].rsplit(":", 1)[1]
    assert dict(final)["EXPOSE"] == port
    # no downloads outside package managers, every COPY source exists and is in the context
    assert not any(i == "ADD" for i, _ in ins)
    patterns = dockerignore()
    for i, a in ins:
        if i == "COPY" and not a.startswith("--from"):
            *srcs, _dest = a.split()
            for s in srcs:
                assert (REPO / s).exists(), f"COPY {s}: not in the repository"
                assert not ignored(s, patterns), f"COPY {s}: excluded by .dockerignore"


def test_dockerignore_keeps_evidence_and_keys_out_of_the_build_context():
    patterns = dockerignore()
    for path in ("fsq.db", "fsq.db-wal", "keys/vault.key", "quarantine/abc.blob",
                 "reports/1.html", ".env", ".venv/bin/python"):
        assert ignored(path, patterns), f"{path} would be sent to the docker daemon"


def test_compose_snippet_matches_pictrs_and_the_cli():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    svc = doc["services"]
    serve, scan, pictrs = svc["fsq-serve"], svc["fsq-scan"], svc["pictrs"]
    # pict-rs fails every upload while the validator is down: it must come back by itself
    assert serve["restart"] == "always"
    assert serve["hostname"] == "fsq"
    url = pictrs["environment"]["PICTRS__MEDIA__EXTERNAL_VALIDATION"]
    assert url == "http://fsq:14051/validate/${FSQ_SERVE_TOKEN}"
    assert int(serve["environment"]["FSQ_SERVE_TIMEOUT"]) < \
        int(pictrs["environment"]["PICTRS__MEDIA__EXTERNAL_VALIDATION_TIMEOUT"])
    for s in (serve, scan):
        check_fsq_args(s["command"])
        env = {k: str(v) for k, v in s["environment"].items() if not str(v).startswith("${")}
        assert not SECRET_ENVS & set(env)
        load_settings(environ=env, cwd=Path("/nonexistent"))
        assert s["read_only"] is True and "ALL" in s["cap_drop"]
    assert "serve" in serve["command"] and "--daemon" in scan["command"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_is_hardened_and_runs_a_real_command(unit):
    text = unit.read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    for k, v in {"ProtectSystem": "strict", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                 "ProtectHome": "yes", "CapabilityBoundingSet": "", "UMask": "0077"}.items():
        assert keys.get(k) == v, f"{unit.name}: {k}={v} expected"
    assert keys["User"] != "root"
    exe, *args = shlex.split(keys["ExecStart"])
    assert exe == "/opt/fsq/bin/fsq"
    if args[0] == "review" and "review" not in cli.commands:
        pytest.skip("`fsq review` is not in this build (the review console is a separate "
                    "change); its unit is checked once it is")
    check_fsq_args(args)
    if "serve" in args:
        assert keys["Restart"] == "always"  # pict-rs answers 500 to uploads while it is down


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package `systemd`)")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    """`systemd-analyze verify` with the fsq executable stubbed (it checks ExecStart exists);
    any warning (unknown key, bad value) fails the test, not only errors."""
    stub = tmp_path / "fsq"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/fsq/bin/fsq", str(stub)))
    p = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr
    # and the check is real: a typo is reported
    bad = tmp_path / f"bad-{unit.name}"
    bad.write_text(copy.read_text().replace("PrivateTmp=yes", "PrivateTemp=yes"))
    p = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert "PrivateTemp" in p.stderr
