"""Policy testing: A/B two policy texts, ablate rules, sweep policy length, catch regressions.

A policy edit changes what the safeguard model does; this module measures the change on a
labelled set the way a code change is measured by tests (``safecascade policy-test``, the command
line in :mod:`safecascade.training.policy_checks_cli`):

* **A/B** (:func:`ab_test`): both policies score the same examples; the paired difference is
  tested with McNemar's exact test on the discordant pairs (``statsmodels``; SciPy's exact
  binomial test when statsmodels is not installed - the same test).
* **Rule ablation** (:func:`ablation`): each rule id (as :class:`~safecascade.router.policy.Policy`
  parses them) is dropped in turn - its line and the EXAMPLES lines citing it - and the change
  against the full policy is measured and tested.
* **Length sweep** (:func:`length_variants`): the policy cut to a fraction of its tokens
  (whole lines, at least one rule kept) or expanded with extra labelled examples from a pool
  that is disjoint from the test set (the gpt-oss-safeguard guide recommends 400-600 tokens).
* **Regression detection** (:func:`regression`): a stored result JSON (``--save``) is the
  baseline; a later run that is worse on the same example ids with McNemar p < alpha is a
  regression (``policy-test`` exits 1).

Scoring is a plain function ``scorer(policy, examples) -> [0 | 1 | None]`` (None = the model
failed on that example; it counts as a wrong answer), so the statistics are tested with a fake
scorer; :func:`judge_scorer` adapts the cached safeguard tier
(:class:`~safecascade.training.safeguard_cache.SafeguardJudge`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from safecascade.router.policy import Policy

log = logging.getLogger(__name__)

Prediction = int | None
Scorer = Callable[[Any, Sequence[Any]], Sequence[Prediction]]
TokenCounter = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """Rough token count (~0.75 words per token), used when no tokenizer is given."""
    return math.ceil(len(text.split()) / 0.75)


# ---------------------------------------------------------------------------- statistics
@dataclass(frozen=True, kw_only=True)
class McNemar:
    """McNemar's exact test on paired correctness: ``a_only`` = A right and B wrong, ``b_only`` =
    the reverse; ``p_value`` two-sided (1.0 when there are no discordant pairs)."""

    n: int
    a_only: int
    b_only: int
    p_value: float
    method: str


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """Exact McNemar test of two paired lists of per-example correctness."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"mcnemar: paired lists differ in length ({len(correct_a)} vs {len(correct_b)})")
    a_only = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    b_only = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    both = sum(1 for a, b in zip(correct_a, correct_b) if a and b)
    neither = len(correct_a) - a_only - b_only - both
    if a_only + b_only == 0:
        return McNemar(n=len(correct_a), a_only=0, b_only=0, p_value=1.0, method="no discordant pairs")
    try:
        from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

        res = sm_mcnemar([[both, a_only], [b_only, neither]], exact=True)
        p, method = float(res.pvalue), "statsmodels exact McNemar"
    except ImportError:
        from scipy.stats import binomtest

        p = float(binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue)
        method = "scipy exact binomial (McNemar)"
    return McNemar(n=len(correct_a), a_only=a_only, b_only=b_only, p_value=min(1.0, p), method=method)


# ---------------------------------------------------------------------------- evaluation
@dataclass(frozen=True, kw_only=True)
class VariantResult:
    """One policy variant scored on a labelled set."""

    name: str
    policy_sha: str
    tokens: int
    rules: int
    labels: tuple[int, ...]
    preds: tuple[Prediction, ...]
    ids: tuple[str, ...] = ()
    note: str = ""

    @property
    def correct(self) -> tuple[bool, ...]:
        return tuple(p is not None and int(p) == int(y) for p, y in zip(self.preds, self.labels))

    @property
    def errors(self) -> int:
        return sum(p is None for p in self.preds)

    def metrics(self) -> dict[str, float]:
        """Accuracy, precision, recall, F1 (a failed example counts as the wrong label)."""
        eff = [int(p) if p is not None else 1 - int(y) for p, y in zip(self.preds, self.labels)]
        tp = sum(1 for p, y in zip(eff, self.labels) if p == 1 and y == 1)
        fp = sum(1 for p, y in zip(eff, self.labels) if p == 1 and y == 0)
        fn = sum(1 for p, y in zip(eff, self.labels) if p == 0 and y == 1)
        n = len(self.labels)
        return {"n": n, "accuracy": sum(self.correct) / n if n else 0.0,
                "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
                "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0,
                "error_rate": self.errors / n if n else 0.0}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "policy_sha": self.policy_sha, "tokens": self.tokens, "rules": self.rules,
                "note": self.note, "metrics": self.metrics(),
                "examples": [{"id": i, "label": y, "pred": p} for i, y, p in zip(self.ids, self.labels, self.preds)]}


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """Variant ``b`` against the reference ``a`` on the same examples."""

    a: VariantResult
    b: VariantResult
    test: McNemar
    alpha: float = 0.05

    @property
    def delta_accuracy(self) -> float:
        return self.b.metrics()["accuracy"] - self.a.metrics()["accuracy"]

    @property
    def delta_f1(self) -> float:
        return self.b.metrics()["f1"] - self.a.metrics()["f1"]

    @property
    def significant(self) -> bool:
        return self.test.p_value < self.alpha

    def row(self) -> dict[str, Any]:
        mb = self.b.metrics()
        return {"variant": self.b.name, "tokens": self.b.tokens, "rules": self.b.rules, "accuracy": mb["accuracy"],
                "f1": mb["f1"], "errors": self.b.errors, "d_accuracy": self.delta_accuracy, "d_f1": self.delta_f1,
                "ref_only_right": self.test.a_only, "variant_only_right": self.test.b_only, "p_value": self.test.p_value,
                "significant": self.significant}


def evaluate(name: str, policy: Any, examples: Sequence[Any], scorer: Scorer, *,
             count_tokens: TokenCounter = approx_tokens, note: str = "") -> VariantResult:
    """Score ``examples`` (objects with ``.text``, ``.label`` and optionally ``.id``) under ``policy``."""
    exs = list(examples)
    if not exs:
        raise ValueError("policy test: no examples")
    preds = list(scorer(policy, exs))
    if len(preds) != len(exs):
        raise ValueError(f"scorer returned {len(preds)} predictions for {len(exs)} examples")
    for p in preds:
        if p not in (0, 1, None):
            raise ValueError(f"scorer returned {p!r}; expected 0, 1 or None")
    return VariantResult(name=name, policy_sha=policy.sha, tokens=int(count_tokens(policy.text)), rules=len(policy.rule_ids),
                         labels=tuple(int(e.label) for e in exs), preds=tuple(preds),
                         ids=tuple(str(getattr(e, "id", i)) for i, e in enumerate(exs)), note=note)


def compare(a: VariantResult, b: VariantResult, *, alpha: float = 0.05) -> Comparison:
    """Paired comparison of two results on the same examples (checked by id)."""
    if a.ids != b.ids:
        raise ValueError("compare: the two results were not scored on the same examples")
    return Comparison(a=a, b=b, test=mcnemar(a.correct, b.correct), alpha=alpha)


def ab_test(policy_a: Any, policy_b: Any, examples: Sequence[Any], scorer: Scorer, *, alpha: float = 0.05,
            count_tokens: TokenCounter = approx_tokens, names: tuple[str, str] = ("A", "B")) -> Comparison:
    """Score both policies on ``examples`` and test the paired difference (McNemar)."""
    ra = evaluate(names[0], policy_a, examples, scorer, count_tokens=count_tokens)
    rb = evaluate(names[1], policy_b, examples, scorer, count_tokens=count_tokens)
    return compare(ra, rb, alpha=alpha)


# ---------------------------------------------------------------------------- policy variants
def drop_rule(policy: Any, rule_id: str) -> Any:
    """The policy without ``rule_id``: its list item and every EXAMPLES line that cites it are removed."""
    if rule_id not in policy.rule_ids:
        raise ValueError(f"policy {policy.name!r} has no rule {rule_id!r} (rules: {', '.join(policy.rule_ids)})")
    own = re.compile(r"^\s*[-*]\s+[*_`]*" + re.escape(rule_id) + r"(?![A-Za-z0-9.])")
    cites = re.compile(r"(?<![A-Za-z0-9.])" + re.escape(rule_id) + r"(?![A-Za-z0-9.])")
    out, in_examples = [], False
    for line in policy.text.splitlines(keepends=True):
        if line.startswith("#"):
            in_examples = "EXAMPLE" in line.upper()
        if own.match(line) or (in_examples and line.lstrip().startswith(("-", "*")) and cites.search(line)):
            continue
        out.append(line)
    return Policy.from_text(policy.name, "".join(out), path=f"{policy.path or policy.name} without {rule_id}")


def truncate_policy(policy: Any, max_tokens: int, *, count_tokens: TokenCounter = approx_tokens) -> Any:
    """The longest prefix of whole lines within ``max_tokens`` that still defines a rule."""
    lines = policy.text.splitlines(keepends=True)
    kept: list[str] = []
    for line in lines:
        if count_tokens("".join(kept + [line])) > max_tokens:
            break
        kept.append(line)
    text = "".join(kept)
    try:
        return Policy.from_text(policy.name, text, path=f"{policy.path or policy.name} cut to {max_tokens} tokens")
    except ValueError as exc:
        raise ValueError(f"cutting {policy.name!r} to {max_tokens} tokens leaves no rule") from exc


def expand_policy(policy: Any, max_tokens: int, pool: Sequence[Any], *, count_tokens: TokenCounter = approx_tokens,
                  words: int = 40) -> Any:
    """The policy plus an ``ADDITIONAL EXAMPLES`` section of labelled pool texts (alternating
    labels, each cut to ``words`` words) until it reaches ``max_tokens``."""
    pos = [e for e in pool if int(e.label) == 1]
    neg = [e for e in pool if int(e.label) == 0]
    order = [x for pair in zip(pos, neg) for x in pair] + pos[len(neg):] + neg[len(pos):]
    text = policy.text.rstrip() + "\n\n## ADDITIONAL EXAMPLES\n"
    added = 0
    for ex in order:
        snippet = " ".join(str(ex.text).replace('"', "'").split()[:words])
        line = f'- "{snippet}" Answer: {int(ex.label)}\n'
        if count_tokens(text + line) > max_tokens:
            break
        text += line
        added += 1
    if not added:
        raise ValueError(f"expanding {policy.name!r} to {max_tokens} tokens: no example fits (pool of {len(order)})")
    return Policy.from_text(policy.name, text, path=f"{policy.path or policy.name} + {added} examples")


def length_variants(policy: Any, fractions: Sequence[float], *, pool: Sequence[Any] = (),
                    count_tokens: TokenCounter = approx_tokens) -> list[tuple[str, Any]]:
    """``(name, policy)`` per fraction of the policy's token count: < 1 cuts, > 1 expands with
    ``pool`` examples, 1 is the policy itself."""
    base = count_tokens(policy.text)
    out = []
    for f in fractions:
        if f <= 0:
            raise ValueError(f"length fraction must be positive, got {f}")
        target = int(round(base * f))
        if abs(f - 1.0) < 1e-9:
            out.append((f"length x1.00 ({base} tok)", policy))
            continue
        var = truncate_policy(policy, target, count_tokens=count_tokens) if f < 1 else \
            expand_policy(policy, target, pool, count_tokens=count_tokens)
        out.append((f"length x{f:.2f} ({count_tokens(var.text)} tok)", var))
    return out


def ablation(policy: Any, examples: Sequence[Any], scorer: Scorer, *, reference: VariantResult | None = None,
             alpha: float = 0.05, count_tokens: TokenCounter = approx_tokens,
             rules: Sequence[str] | None = None) -> list[Comparison]:
    """Drop each rule (or ``rules``) in turn; compare each variant with the full policy."""
    ref = reference or evaluate("full policy", policy, examples, scorer, count_tokens=count_tokens)
    out = []
    for rid in (rules or policy.rule_ids):
        var = drop_rule(policy, rid)
        out.append(compare(ref, evaluate(f"without {rid}", var, examples, scorer, count_tokens=count_tokens), alpha=alpha))
    return out


# ---------------------------------------------------------------------------- regression
@dataclass(frozen=True, kw_only=True)
class Regression:
    """The current result against a stored baseline, on the example ids both hold."""

    n: int
    baseline_accuracy: float
    current_accuracy: float
    test: McNemar
    alpha: float
    regressed: bool
    details: dict[str, Any] = field(default_factory=dict)


def regression(current: Mapping[str, Any], baseline: Mapping[str, Any], *, alpha: float = 0.05) -> Regression:
    """Compare two result dicts (:meth:`VariantResult.to_dict`) on shared example ids; a
    regression is lower accuracy with McNemar p < ``alpha``."""
    cur = {str(e["id"]): e for e in current.get("examples", [])}
    base = {str(e["id"]): e for e in baseline.get("examples", [])}
    shared = [i for i in base if i in cur]
    if not shared:
        raise ValueError("regression check: the baseline and this run share no example ids")
    relabelled = [i for i in shared if int(cur[i]["label"]) != int(base[i]["label"])]
    if relabelled:
        raise ValueError(f"regression check: {len(relabelled)} shared example(s) have different labels (e.g. {relabelled[0]})")

    def ok(e: Mapping[str, Any]) -> bool:
        return e.get("pred") is not None and int(e["pred"]) == int(e["label"])

    cb = [ok(base[i]) for i in shared]
    cc = [ok(cur[i]) for i in shared]
    test = mcnemar(cb, cc)
    ab, ac = sum(cb) / len(shared), sum(cc) / len(shared)
    return Regression(n=len(shared), baseline_accuracy=ab, current_accuracy=ac, test=test, alpha=alpha,
                      regressed=ac < ab and test.p_value < alpha,
                      details={"baseline_sha": baseline.get("policy_sha"), "current_sha": current.get("policy_sha"),
                               "only_in_baseline": len(base) - len(shared), "only_in_current": len(cur) - len(shared)})


# ---------------------------------------------------------------------------- safeguard adaptor
def judge_scorer(judge: Any, *, policy_name: str | None = None, options: Mapping[str, Any] | None = None,
                 progress: bool = True) -> Scorer:
    """A :data:`Scorer` backed by a :class:`~safecascade.training.safeguard_cache.SafeguardJudge`."""

    def score(policy: Any, examples: Sequence[Any]) -> list[Prediction]:
        name = policy_name or policy.name
        js = judge.judge({name: policy}, [e.text for e in examples], options=options,
                         desc=f"{name}@{policy.sha}", progress=progress)
        return [j.prediction(name) for j in js]

    return score


# ---------------------------------------------------------------------------- data and the suite
@dataclass(frozen=True, kw_only=True)
class LabelledText:
    text: str
    label: int
    id: str


def load_labelled(path: str | Path) -> list[LabelledText]:
    """A CSV (``text,label[,id]``) or JSONL (``{"text", "label", "id"?}``) file of labelled texts."""
    p = Path(path)
    rows: list[dict[str, Any]] = []
    try:
        if p.suffix == ".jsonl":
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            with p.open(encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read labelled data {p}: {exc}") from exc
    out = []
    for i, r in enumerate(rows):
        if "text" not in r or "label" not in r or str(r["label"]).strip() not in ("0", "1"):
            raise ValueError(f"{p}: row {i + 1} needs 'text' and a 0/1 'label'")
        out.append(LabelledText(text=str(r["text"]), label=int(str(r["label"]).strip()), id=str(r.get("id") or i)))
    if not out:
        raise ValueError(f"{p}: no rows")
    return out


def run_suite(policy: Any, examples: Sequence[Any], scorer: Scorer, *, against: Any = None, ablate: bool = False,
              fractions: Sequence[float] = (), pool: Sequence[Any] = (), alpha: float = 0.05,
              count_tokens: TokenCounter = approx_tokens, baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``policy-test`` does, as a JSON-able dict (``reference`` = the full policy's result)."""
    ref = evaluate(policy.name, policy, examples, scorer, count_tokens=count_tokens)
    report: dict[str, Any] = {"policy": policy.name, "policy_sha": policy.sha, "alpha": alpha, "reference": ref.to_dict()}
    if against is not None:
        report["ab"] = compare(ref, evaluate(f"B {against.sha}", against, examples, scorer, count_tokens=count_tokens),
                               alpha=alpha).row()
    if ablate:
        report["ablation"] = [c.row() for c in ablation(policy, examples, scorer, reference=ref, alpha=alpha,
                                                        count_tokens=count_tokens)]
    if fractions:
        rows = []
        for name, var in length_variants(policy, fractions, pool=pool, count_tokens=count_tokens):
            rows.append(compare(ref, evaluate(name, var, examples, scorer, count_tokens=count_tokens), alpha=alpha).row())
        report["lengths"] = rows
    if baseline is not None:
        r = regression(ref.to_dict(), baseline, alpha=alpha)
        report["regression"] = {"n": r.n, "baseline_accuracy": r.baseline_accuracy, "current_accuracy": r.current_accuracy,
                                "baseline_only_right": r.test.a_only, "current_only_right": r.test.b_only,
                                "p_value": r.test.p_value, "regressed": r.regressed, **r.details}
    return report


def report_markdown(report: Mapping[str, Any]) -> str:
    """A readable Markdown rendering of :func:`run_suite`'s report."""

    def table(rows: Sequence[Mapping[str, Any]]) -> str:
        if not rows:
            return "_(none)_\n"
        cols = list(rows[0])
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
        return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                         ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]) + "\n"

    ref = report["reference"]
    m = ref["metrics"]
    out = [f"# policy-test: {report['policy']} @ {report['policy_sha']} ({report.get('model', '')})\n",
           f"Reference: n={m['n']}, accuracy {m['accuracy']:.3f}, F1 {m['f1']:.3f}, errors {m['error_rate']:.3f}, "
           f"{ref['tokens']} tokens, {ref['rules']} rules.\n"]
    if "ab" in report:
        out += ["## A/B (McNemar exact, paired)\n", table([report["ab"]])]
    if "ablation" in report:
        out += ["## Rule ablation\n", table(report["ablation"])]
    if "lengths" in report:
        out += ["## Length sweep\n", table(report["lengths"])]
    if "regression" in report:
        r = report["regression"]
        verdict = "REGRESSION" if r["regressed"] else "no significant regression"
        out += ["## Regression check\n", f"{verdict}: accuracy {r['baseline_accuracy']:.3f} -> {r['current_accuracy']:.3f} "
                f"on {r['n']} shared examples, p = {r['p_value']:.4f} (alpha {report['alpha']}).\n"]
    return "\n".join(out)
