"""Docs are tested (STYLE.md #9): every command has --help with an example; the README's
commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import click

from fsq.cli.main import cli

REPO = Path(__file__).resolve().parents[1]


def all_commands(group=cli, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        path = prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, path)
        else:
            yield path, cmd


def test_every_command_has_help_with_example(fsq):
    paths = list(all_commands())
    assert len(paths) >= 10
    for path, cmd in paths:
        r = fsq([*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "Example" in r.stdout, f"`fsq {' '.join(path)} --help` has no example"


def test_top_level_help_and_version(fsq):
    r = fsq(["--help"])
    assert r.exit_code == 0 and "quarantine" in r.stdout.lower()
    v = fsq(["--version"])
    assert v.exit_code == 0 and "fsq" in v.stdout


def test_readme_commands_exist():
    text = (REPO / "README.md").read_text()
    known = {" ".join(p) for p, _ in all_commands()} | set(cli.commands)
    blocks = "\n".join(re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S))
    used = set(re.findall(r"^\s*(?:\$ )?fsq ([a-z-]+(?: [a-z-]+)?)", blocks, re.M))
    used |= set(re.findall(r"`fsq ([a-z-]+(?: [a-z-]+)?)", text))
    assert used, "README shows no fsq commands"
    for u in used:
        first = u.split()[0]
        assert u in known or first in known, f"README mentions unknown command `fsq {u}`"


def test_unknown_command_is_usage_error(fsq):
    r = fsq(["frobnicate"])
    assert r.exit_code == 2


def test_quick_start_demo_runs_the_whole_flow_offline(fsq_proc, tmp_path):
    """The README's first quick-start command is `make demo`, i.e. `fsq demo` in a fresh
    directory: the whole flow (init, scan, apply, release, rescan, report, audit verify) on
    synthetic images and the tiny model, with no network. Run again with --fresh, as its
    help suggests: the same outcome."""
    for args in (["demo"], ["demo", "--fresh"]):
        r = fsq_proc(args, cwd=str(tmp_path), timeout=600)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        assert "audit log intact" in r.stdout and "demo finished." in r.stdout, r.stdout[-800:]
        assert "incident 1: restored 1 file(s)" in r.stdout
