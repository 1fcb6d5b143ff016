"""Policies: Markdown files whose list items start with a rule id (``JB1.a``, ``S.b``, ...).

A policy is read once, hashed (sha256 of its UTF-8 text, first 12 hex digits) and its rule ids
are parsed so that rule ids cited by a tier can be checked against it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# A rule id is the first token of a list item: "- **JB1.a** ..." or "- `PI2.b`: ..." or "- JB0.a ...";
# the rest of the line is what the rule says.
_RULE_LINE = re.compile(r"^\s*[-*]\s+[*_`]*([A-Z][A-Z0-9]*\.[a-z0-9]+)(?![A-Za-z0-9.])[*_`]*[\s:]*(.*)$", re.MULTILINE)
RULE_ID = re.compile(r"\b[A-Z][A-Z0-9]*\.[a-z0-9]+\b")
_SAFE_ID = re.compile(r"^[A-Z]+0\.")  # JB0.a, HR0.b: SAFE criteria by convention


def is_safe_rule_id(rule_id: str) -> bool:
    """Whether ``rule_id`` names a SAFE criterion (number part 0: ``JB0.a``), not a violation."""
    return _SAFE_ID.match(rule_id) is not None


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A written policy: its name, text, content hash and the rule ids it defines."""

    name: str
    text: str
    sha: str
    rule_ids: tuple[str, ...]
    path: str = ""

    @classmethod
    def from_text(cls, name: str, text: str, *, path: str = "") -> "Policy":
        if not text.strip():
            raise ValueError(f"policy {name!r} is empty ({path or 'inline text'})")
        ids = tuple(dict.fromkeys(m.group(1) for m in _RULE_LINE.finditer(text)))
        if not ids:
            raise ValueError(f"policy {name!r} defines no rule ids (list items starting with an id like JB1.a) in {path or 'inline text'}")
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        return cls(name=name, text=text, sha=sha, rule_ids=ids, path=path)

    @classmethod
    def from_file(cls, name: str, path: str | Path) -> "Policy":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"policy {name!r}: cannot read {p}: {exc.strerror or exc}") from exc
        return cls.from_text(name, text, path=str(p))

    def violating_rule_ids(self) -> tuple[str, ...]:
        """Rule ids whose number part is not 0 (``JB0.a`` marks SAFE criteria by convention)."""
        return tuple(r for r in self.rule_ids if not is_safe_rule_id(r))

    def rule_text(self, rule_id: str) -> str:
        """What the policy says under ``rule_id`` (its list item, without the id: "Weapons: making or
        acquiring weapons, ..."); "" for an id it does not define."""
        return self._rule_texts.get(rule_id, "")

    @functools.cached_property
    def _rule_texts(self) -> dict[str, str]:
        """Rule id -> its list item's text (the first item for an id listed twice), read once."""
        out: dict[str, str] = {}
        for m in _RULE_LINE.finditer(self.text):
            out.setdefault(m.group(1), m.group(2).strip())
        return out

    def check_citations(self, cited: list[str] | tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Split cited ids into (known, hallucinated)."""
        known = set(self.rule_ids)
        good = tuple(c for c in cited if c in known)
        bad = tuple(c for c in cited if c not in known)
        return good, bad


def builtin_policy_path(filename: str) -> Path:
    """Path of a policy shipped in ``models/policies``."""
    return Path(str(resources.files("safecascade.models").joinpath("policies").joinpath(filename)))


def builtin_policies() -> dict[str, Path]:
    """Shipped policies by name (file stem)."""
    root = Path(str(resources.files("safecascade.models").joinpath("policies")))
    return {p.stem: p for p in sorted(root.glob("*.md"))}
