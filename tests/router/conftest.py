from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.router import fakes  # noqa: F401  (registers the "table" tier)

POLICY_A = """# Policy A
## VIOLATES (1)
- **A1.a** Bad thing one.
- **A1.b** Bad thing two.
## SAFE (0)
- **A0.a** Everything else.
"""
POLICY_B = """# Policy B
## VIOLATES (1)
- **B1.a** Other bad thing.
## SAFE (0)
- **B0.a** Everything else.
"""


@pytest.fixture
def make_config(tmp_path: Path):
    """Write a router YAML (with two small policies) into tmp_path and return its path."""
    (tmp_path / "a.md").write_text(POLICY_A)
    (tmp_path / "b.md").write_text(POLICY_B)

    def _make(tiers, policies=("a",), input_cfg=None, name="test"):
        cfg = {"name": name, "policies": {p: f"{p}.md" for p in policies}, "tiers": tiers}
        if input_cfg:
            cfg["input"] = input_cfg
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return _make
