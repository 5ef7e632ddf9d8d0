"""Settings precedence, validation, masking, env_example in sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsq.config import SETTINGS, load_settings, mask_url, render_env_example
from fsq.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_precedence_flag_env_dotenv_default(tmp_path):
    (tmp_path / ".env").write_text("FSQ_SEVERITY=lenient\nFSQ_BATCH_SIZE=4\nFSQ_WORKERS=3\n")
    s = load_settings({"batch_size": "16"}, environ={"FSQ_WORKERS": "5"}, cwd=tmp_path)
    assert s.batch_size == 16 and s.origin("batch_size") == "flag"
    assert s.workers == 5 and s.origin("workers") == "env"
    assert s.severity == "lenient" and s.origin("severity") == ".env"
    assert s.db == "./fsq.db" and s.origin("db") == "default"


def test_dotenv_quotes_comments_export(tmp_path):
    (tmp_path / ".env").write_text("# comment\n\nexport FSQ_DB='/var/lib/fsq/state.db'\n"
                                   "FSQ_MODEL=\"ViT-B-32\"\nFSQ_SEVERITY=strict # inline\n")
    s = load_settings({}, environ={}, cwd=tmp_path)
    assert (s.db, s.model, s.severity) == ("/var/lib/fsq/state.db", "ViT-B-32", "strict")


@pytest.mark.parametrize("env,needle", [
    ({"FSQ_BATCH_SIZE": "many"}, "FSQ_BATCH_SIZE"),
    ({"FSQ_BATCH_SIZE": "0"}, "at least 1"),
    ({"FSQ_SEVERITY": "extreme"}, "FSQ_SEVERITY"),
    ({"FSQ_SERVE_LISTEN": "nope"}, "HOST:PORT"),
    ({"FSQ_S3_PATH_STYLE": "maybe"}, "FSQ_S3_PATH_STYLE"),
    ({"FSQ_SEVERTY": "strict"}, "did you mean FSQ_SEVERITY"),
])
def test_bad_values_name_the_setting(tmp_path, env, needle):
    with pytest.raises(ConfigError) as ei:
        load_settings({}, environ=env, cwd=tmp_path)
    assert needle in ei.value.message and "\n" not in ei.value.message
    assert ei.value.exit_code == 2


def test_unknown_in_dotenv_and_testonly_refused_in_dotenv(tmp_path):
    (tmp_path / ".env").write_text("FSQ_NOPE=1\n")
    with pytest.raises(ConfigError, match="FSQ_NOPE"):
        load_settings({}, environ={}, cwd=tmp_path)
    (tmp_path / ".env").write_text("FSQ_TESTONLY_WEAKEN_KDF=1\n")
    with pytest.raises(ConfigError, match="test-only"):
        load_settings({}, environ={}, cwd=tmp_path)


def test_secret_values_hidden_even_in_errors(tmp_path):
    s = load_settings({}, environ={"FSQ_VAULT_PASSPHRASE": "hunter2-secret",
                                   "FSQ_LEMMY_DATABASE_URL": "postgresql://ro:pw-XYZ@db/lemmy"},
                      cwd=tmp_path)
    text = repr(s) + str(s.masked())
    assert "hunter2-secret" not in text and "pw-XYZ" not in text
    assert s.masked()["FSQ_LEMMY_DATABASE_URL"] == "postgresql://ro:***@db/lemmy"
    assert s.vault_passphrase == "hunter2-secret"


def test_mask_url():
    assert mask_url("postgresql://u:p@h:5432/db?x=1") == "postgresql://u:***@h:5432/db?x=1"
    assert mask_url("postgresql://h/db") == "postgresql://h/db"


def test_env_example_lists_every_setting_and_is_generated():
    text = (REPO / "env_example").read_text()
    assert text == render_env_example(), "regenerate env_example from fsq.config"
    for s in SETTINGS:
        assert f"# {s.env}=" in text


def test_config_show_masks_and_reports_origin(fsq, monkeypatch):
    monkeypatch.setenv("FSQ_PICTRS_API_KEY", "api-key-should-not-show")
    monkeypatch.setenv("FSQ_SEVERITY", "strict")
    r = fsq(["config", "show"])
    assert r.exit_code == 0
    assert "api-key-should-not-show" not in r.output
    assert "FSQ_PICTRS_API_KEY" in r.stdout and "***" in r.stdout
    assert any(line.startswith("FSQ_SEVERITY") and "strict" in line and "[env]" in line
               for line in r.stdout.splitlines())


def test_config_error_exit_2_one_line(fsq, monkeypatch):
    monkeypatch.setenv("FSQ_WORKERS", "-3")
    r = fsq(["config", "show"])
    assert r.exit_code == 2
    lines = [l for l in r.stderr.splitlines() if l.startswith("fsq: error")]
    assert len(lines) == 1 and "FSQ_WORKERS" in lines[0]
    assert "Traceback" not in r.output
