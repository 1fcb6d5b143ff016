"""``safecascade export-sft``: logged safeguard verdicts as harmony-format JSONL for fine-tuning
gpt-oss-safeguard.

One JSON line per (logged teacher row, policy) - see :mod:`safecascade.training.verdict_rows`
for which rows count. Each line holds the conversation exactly as the safeguard tier prompts
the model, plus the model's answer::

    {"id": "<record_id>:<policy>", "record_id": ..., "ts": ..., "text_hash": ...,
     "policy": {"name": "jailbreak", "sha": "<12 hex>", "path": ".../jailbreak.md"},
     "reasoning_effort": "low",
     "messages": [
       {"role": "system",    "content": "<harmony system message: identity, cutoff, reasoning, channels>"},
       {"role": "developer", "content": "<the policy text + content rules + output format>"},
       {"role": "user",      "content": "Content to classify:\\n[BEGIN CONTENT]\\n...\\n[END CONTENT]"},
       {"role": "assistant", "channel": "final", "thinking": "<analysis text, else the rationale>",
        "content": "{\\"violation\\": 1, \\"policy_category\\": ..., \\"rule_ids\\": [...], ...}"}],
     "label": 1, "probability": 0.93, "rule_ids": ["JB1.a"], "confidence": "high",
     "thinking_source": "analysis" | "rationale",
     "ground_truth": {"label": 1, "benchmark": "jailbreak", "split": "test", "id": "...",
                      "agrees": true} | null,
     "n_tokens": 812}

* The **developer** and **user** messages are built with the tier's own functions
  (:func:`~safecascade.tiers.safeguard.prompt.developer_text`, ``user_text``: delimited,
  special tokens neutralised), so fine-tuning sees what inference sends.
* The **policy** is resolved by the hash logged with the row (``policy_hashes``) among the
  shipped policies (``models/policies``) and any ``--policy-dir`` / ``--policy`` files; a row
  whose policy text cannot be found (edited since) is skipped and counted - its verdict was
  about a different text.
* **thinking** is the analysis channel when the log has it, else the verdict's rationale (the
  safeguard tier logs the parsed verdict - violation, confidence, category, rationale, rule
  ids - in its trace info). Rows with neither are skipped unless ``allow_empty_thinking``.
* **rule_ids** are the logged (policy-checked) rule ids; hallucinated ids never reach the
  target answer.
* **ground_truth** is the benchmark's gold label when the text is in a labelled benchmark bound
  to that policy, else ``null``.

Every conversation is rendered with ``openai-harmony``
(``render_conversation_for_training``, analysis kept) and parsed back; a line is written only
when the parsed messages equal the JSON messages (``n_tokens`` is the rendered length).
``include_rendered`` adds the rendered text as ``"harmony"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tqdm.auto import tqdm

from safecascade.hashing import text_hash
from safecascade.router.policy import Policy, builtin_policies
from safecascade.tiers.safeguard.prompt import HARMONY_SPECIAL, REASONING_EFFORTS, developer_text, harmony_encoding, user_text
from safecascade.training.datasets import benchmark_names, benchmark_policy, benchmark_splits, load_benchmark
from safecascade.training.verdict_rows import teacher_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExportStats:
    """What ``export_sft`` wrote and skipped."""

    rows_read: int = 0
    teacher_rows: int = 0  # distinct texts the teacher scored
    exported: int = 0  # JSONL lines written
    skipped_no_text: int = 0  # store_text was off: nothing to fine-tune on
    skipped_policy_unresolved: int = 0  # no policy file with the logged hash
    skipped_no_verdict: int = 0  # no logged verdict details / thinking for that policy
    with_ground_truth: int = 0
    ground_truth_agrees: int = 0
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- policies / gold labels


def policy_index(policy_dirs: Sequence[str | Path] = (), policy_files: Mapping[str, str | Path] | None = None) -> dict[str, Any]:
    """sha -> :class:`~safecascade.router.policy.Policy` for the shipped policies, every ``*.md``
    in ``policy_dirs`` and ``policy_files`` (name -> path)."""
    out: dict[str, Any] = {}
    candidates: list[tuple[str, Path]] = list(builtin_policies().items())
    for d in policy_dirs:
        dp = Path(d)
        if not dp.is_dir():
            raise ValueError(f"policy dir not found: {dp}")
        candidates += [(p.stem, p) for p in sorted(dp.glob("*.md"))]
    candidates += [(n, Path(p)) for n, p in (policy_files or {}).items()]
    for name, path in candidates:
        try:
            pol = Policy.from_file(name, path)
        except ValueError as exc:
            log.warning("skipping policy %s: %s", path, exc)
            continue
        out.setdefault(pol.sha, pol)
    return out


def gold_index() -> dict[tuple[str, str], dict[str, Any]]:
    """(text hash, policy) -> gold label of every labelled benchmark text."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for bench in benchmark_names():
        pol = benchmark_policy(bench)
        for split in benchmark_splits(bench):
            for ex in load_benchmark(bench, split):
                out.setdefault((text_hash(ex.text), pol), {"label": int(ex.label), "benchmark": bench, "split": split, "id": ex.id})
    return out


# --------------------------------------------------------------------------- one example


def _final_answer(detail: Mapping[str, Any], label: int, rule_ids: Sequence[str]) -> str:
    """The verdict object in the output format the developer message asks for."""
    ans = {"violation": int(label), "policy_category": str(detail.get("policy_category") or "none"),
           "rule_ids": list(rule_ids), "confidence": str(detail.get("confidence") or "medium"),
           "rationale": str(detail.get("rationale") or "")}
    return json.dumps(ans, ensure_ascii=False)


def build_messages(*, policy: Any, content: str, thinking: str, final: str, reasoning_effort: str) -> list[dict[str, Any]]:
    """The four JSONL messages (system text is filled in by :func:`render_and_check`)."""
    head, clean, tail, _ = user_text(content, HARMONY_SPECIAL)
    return [
        {"role": "system", "content": None, "reasoning_effort": reasoning_effort},
        {"role": "developer", "content": developer_text({policy.name: policy}, joint=False)},
        {"role": "user", "content": head + clean + tail},
        {"role": "assistant", "channel": "final", "content": final, "thinking": thinking},
    ]


def render_and_check(messages: list[dict[str, Any]], enc: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """Render the conversation with openai-harmony (training rendering, analysis kept), parse
    the tokens back and check every message round-trips. Returns (messages with the system
    text filled in, tokens). Raises ``ValueError`` on any mismatch."""
    import openai_harmony as oh  # optional (the `llm` extra)

    sys_m, dev_m, user_m, asst_m = messages
    effort = oh.ReasoningEffort(str(sys_m.get("reasoning_effort") or "low").capitalize())
    conv = oh.Conversation.from_messages([
        oh.Message.from_role_and_content(oh.Role.SYSTEM, oh.SystemContent.new().with_reasoning_effort(effort)),
        oh.Message.from_role_and_content(oh.Role.DEVELOPER, oh.DeveloperContent.new().with_instructions(dev_m["content"])),
        oh.Message.from_role_and_content(oh.Role.USER, user_m["content"]),
        *([oh.Message.from_role_and_content(oh.Role.ASSISTANT, asst_m["thinking"]).with_channel("analysis")]
          if asst_m.get("thinking") else []),
        oh.Message.from_role_and_content(oh.Role.ASSISTANT, asst_m["content"]).with_channel("final"),
    ])
    tokens = enc.render_conversation_for_training(conv, oh.RenderConversationConfig(auto_drop_analysis=False))
    parsed = enc.parse_messages_from_completion_tokens(tokens, None)
    got = [(m.author.role.value, m.channel, "".join(getattr(c, "text", "") for c in m.content)) for m in parsed]
    system_text = got[0][2] if got else ""
    want = [("system", None, system_text), ("developer", None, "# Instructions\n\n" + dev_m["content"]),
            ("user", None, user_m["content"])]
    if asst_m.get("thinking"):
        want.append(("assistant", "analysis", asst_m["thinking"]))
    want.append(("assistant", "final", asst_m["content"]))
    if got != want:
        diff = next((f"message {i}: {g!r:.120} != {w!r:.120}" for i, (g, w) in enumerate(zip(got, want)) if g != w),
                    f"{len(got)} messages parsed, {len(want)} expected")
        raise ValueError(f"harmony round trip failed: {diff}")
    out = [dict(m) for m in messages]
    out[0] = {"role": "system", "content": system_text}
    return out, tokens


def _harmony() -> Any:
    enc = harmony_encoding()
    if enc is None:
        raise ValueError("export-sft needs openai-harmony with its o200k vocab (pip install 'safecascade[llm]'; "
                         "offline: quicktok-v1, or TIKTOKEN_ENCODINGS_BASE pointing at o200k_base.tiktoken)")
    return enc


# --------------------------------------------------------------------------- the export


def export_sft(log_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, tier: str = "safeguard",
               decided_only: bool = False, policy_dirs: Sequence[str | Path] = (),
               policy_files: Mapping[str, str | Path] | None = None, reasoning_effort: str = "low",
               allow_empty_thinking: bool = False, ground_truth: bool = True, include_rendered: bool = False,
               since: Any = None, progress: bool = False) -> ExportStats:
    """Write the teacher's logged verdicts in ``log_path`` as harmony JSONL to ``out_path``
    (atomically; see the module docstring for the format). Returns what was written / skipped."""
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning effort must be one of {REASONING_EFFORTS}, got {reasoning_effort!r}")
    enc = _harmony()
    rows, st = teacher_rows(log_path, tier=tier, decided_only=decided_only, since=since)
    policies = policy_index(policy_dirs, policy_files)
    gold = gold_index() if ground_truth else {}
    counts: dict[str, Any] = {"rows_read": st.rows_read, "teacher_rows": len(rows), "exported": 0, "skipped_no_text": 0,
                              "skipped_policy_unresolved": 0, "skipped_no_verdict": 0, "with_ground_truth": 0,
                              "ground_truth_agrees": 0, "labels": {"0": 0, "1": 0}}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in tqdm(rows, desc="export-sft", disable=not progress, unit="row"):
                if row.text is None:
                    counts["skipped_no_text"] += 1
                    continue
                details = (row.info.get("verdicts") or {}) if isinstance(row.info, Mapping) else {}
                effort = str(row.info.get("reasoning_effort") or reasoning_effort)
                for pol_name, prob in row.scores.items():
                    sha = row.policy_hashes.get(pol_name)
                    policy = policies.get(sha) if sha else None
                    if policy is None:
                        counts["skipped_policy_unresolved"] += 1
                        continue
                    if policy.name != pol_name:  # same text, registered under the log's name
                        policy = Policy.from_text(pol_name, policy.text, path=policy.path)
                    detail = dict(details.get(pol_name) or {})
                    thinking = str(detail.get("analysis") or "") or str(detail.get("rationale") or "")
                    source = "analysis" if detail.get("analysis") else ("rationale" if detail.get("rationale") else "none")
                    if (not detail or not thinking) and not allow_empty_thinking:
                        counts["skipped_no_verdict"] += 1
                        continue
                    label = int(detail["violation"]) if detail.get("violation") in (0, 1) else int(row.labels[pol_name])
                    rule_ids = list(row.rule_ids.get(pol_name, ()))
                    final = _final_answer(detail, label, rule_ids)
                    msgs = build_messages(policy=policy, content=row.text, thinking=thinking, final=final,
                                          reasoning_effort=effort)
                    msgs, tokens = render_and_check(msgs, enc)
                    gt = gold.get((row.text_hash, pol_name))
                    if gt is not None:
                        gt = {**gt, "agrees": gt["label"] == label}
                        counts["with_ground_truth"] += 1
                        counts["ground_truth_agrees"] += int(gt["agrees"])
                    rec = {"id": f"{row.record_id}:{pol_name}", "record_id": row.record_id, "ts": row.ts,
                           "text_hash": row.text_hash, "policy": {"name": pol_name, "sha": policy.sha, "path": policy.path},
                           "reasoning_effort": effort, "messages": msgs, "label": label, "probability": float(prob),
                           "rule_ids": rule_ids, "confidence": detail.get("confidence"), "thinking_source": source,
                           "ground_truth": gt, "n_tokens": len(tokens)}
                    if include_rendered:
                        rec["harmony"] = enc.decode(tokens)
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    counts["exported"] += 1
                    counts["labels"][str(label)] += 1
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    stats = ExportStats(**counts)
    log.info("export-sft %s -> %s: %s", log_path, out, stats.to_dict())
    return stats


def read_jsonl(path: str | os.PathLike[str]) -> Iterable[dict[str, Any]]:
    """The records of an export (one dict per line)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``safecascade export-sft``."""
    parser.add_argument("--from-log", dest="from_log", required=True, metavar="DB", help="the SQLite verdict log (store_text on)")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--tier", default="safeguard", help="tier whose verdicts are exported")
    parser.add_argument("--decided-only", action="store_true", help="only rows that tier decided")
    parser.add_argument("--policy-dir", action="append", default=[], help="more policy *.md files to resolve logged hashes (repeatable)")
    parser.add_argument("--policy", action="append", default=[], metavar="NAME=PATH", help="one more policy file (repeatable)")
    parser.add_argument("--reasoning-effort", choices=["low", "medium", "high"], default="low",
                        help="for rows whose log does not say which effort was used")
    parser.add_argument("--allow-empty-thinking", action="store_true", help="also export rows without analysis/rationale")
    parser.add_argument("--no-ground-truth", action="store_true", help="skip the benchmark gold-label lookup")
    parser.add_argument("--rendered", action="store_true", help="add the rendered harmony text to each line")


def run(args: argparse.Namespace) -> int:
    """Run ``safecascade export-sft``: write the JSONL and print what was written / skipped."""
    files = {}
    for item in args.policy:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--policy expects NAME=PATH, got {item!r}")
        files[name] = path
    if not Path(args.from_log).is_file():
        raise FileNotFoundError(f"verdict log not found: {args.from_log}")
    st = export_sft(args.from_log, args.out, tier=args.tier, decided_only=args.decided_only, policy_dirs=args.policy_dir,
                    policy_files=files, reasoning_effort=args.reasoning_effort,
                    allow_empty_thinking=args.allow_empty_thinking, ground_truth=not args.no_ground_truth,
                    include_rendered=args.rendered, progress=True)
    print(f"{st.exported} example(s) -> {args.out} (labels {st.labels}; {st.with_ground_truth} with ground truth, "
          f"{st.ground_truth_agrees} agreeing)")
    print(f"read {st.rows_read} log rows, {st.teacher_rows} {args.tier} verdicts; skipped: {st.skipped_no_text} without text "
          f"(store_text off), {st.skipped_policy_unresolved} with an unknown policy hash, {st.skipped_no_verdict} without "
          "verdict details/thinking")
    return 0
