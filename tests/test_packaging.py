"""`pip install .` (not editable) must give a working install with templates and the default
concept set: build the wheel and look inside."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_setup_cfg_lists_every_package():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.relative_to(REPO).parent.parts) for p in (REPO / "fsq").rglob("__init__.py")}
    assert found <= listed, f"add to setup.cfg packages: {sorted(found - listed)}"


def test_wheel_contains_templates_and_concepts(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    if r.returncode != 0 and "No module named" in r.stderr:
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (whl,) = tmp_path.glob("fsq-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert "fsq/classify/default_concepts.toml" in names
    templates = [n for n in names if n.startswith("fsq/templates/") and n.endswith(".html")]
    assert templates, sorted(names)
    for n in ("review/base.html", "review/incident.html", "review/review.js",
              "review/review.css"):
        assert f"fsq/templates/{n}" in names, n
    assert "fsq/cli/main.py" in names
    eps = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fsq = fsq.cli.main:main" in zipfile.ZipFile(whl).read(eps).decode()
