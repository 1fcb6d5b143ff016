"""CLI: classify prints the Decision, reads stdin with '-', and bad input/config give clear errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import yaml

from safecascade.cli import main
from safecascade.hashing import text_hash

POLICY = "# P\n## VIOLATES (1)\n- **P1.a** bad.\n## SAFE (0)\n- **P0.a** fine.\n"


@pytest.fixture
def replay_config(tmp_path):
    (tmp_path / "p.md").write_text(POLICY)
    (tmp_path / "v.csv").write_text(f"text_hash,p,p_rule_ids\n{text_hash('evil text')},0.97,P1.a\n{text_hash('nice text')},0.02,\n")
    cfg = {"name": "cli", "policies": {"p": "p.md"},
           "tiers": [{"name": "replay", "type": "replay", "options": {"path": "v.csv"}, "on_error": "block"}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_classify_text_and_exit_codes(replay_config, capsys):
    assert main(["classify", "--config", replay_config, "nice text"]) == 0
    assert capsys.readouterr().out.startswith("allow (tier=replay")
    assert main(["classify", "--config", replay_config, "evil text"]) == 1
    assert "rules=P1.a sub-categories=p/P1.a," in capsys.readouterr().out


def test_classify_json(replay_config, capsys):
    main(["classify", "--config", replay_config, "--json", "evil text"])
    d = json.loads(capsys.readouterr().out)
    assert d["action"] == "block" and d["flagged"] is True and d["policies"]["p"]["rule_ids"] == ["P1.a"]


def test_classify_stdin(replay_config, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"evil text")))
    assert main(["classify", "--config", replay_config, "-"]) == 1


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"policies": {"p": "p.md"}, "tiers": [{"type": "warp-drive"}]}))
    assert main(["classify", "--config", str(bad), "x"]) == 2
    err = capsys.readouterr().err
    assert "tiers[0].type: unknown tier type 'warp-drive'" in err and "Traceback" not in err


def test_console_script_runs(replay_config):
    exe = [sys.executable, "-m", "safecascade.cli", "classify", "--config", replay_config, "--json", ""]
    out = subprocess.run(exe, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["reason"] == "empty_input"
