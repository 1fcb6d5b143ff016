"""The training arguments of the fast and static tiers: :class:`TrainConfig`.

One frozen dataclass holds everything that determines a trained tier; it is validated on
construction, logged to MLflow as params and written into the model card (``config``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from safecascade.tiers.onnx_encoder import WindowConfig
from safecascade.training.finetune import FinetuneConfig


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that determines a trained tier (logged to MLflow as params).

    Args:
        kind: Which tier to train: ``"fast"`` (ONNX MiniLM + head), ``"static"`` (model2vec + head)
            or ``"multilingual"`` (USE-multilingual v3 + head; :mod:`safecascade.training.multilingual_train`).
        benchmark: The labelled benchmark whose train/val/test splits are used
            (:func:`~safecascade.training.fast_train.train_from_benchmark`).
        policies: The policies to train a head for; the labelled examples carry ``policies[0]``,
            verdict rows may carry any of them.
        encoder: ``"default"`` (the bundled all-MiniLM-L6-v2) or a sentence-transformers model directory.
        head: The head on the window embeddings: ``"lr"`` (logistic regression, sklearn) or ``"mlp"``
            (one hidden relu layer, trained with torch: :func:`~safecascade.training.heads.fit_mlp`).
        hidden: MLP hidden units.
        alpha: MLP weight decay (AdamW).
        C: Logistic regression's inverse regularisation.
        max_iter: Logistic regression's iterations are four times this.
        epochs: MLP training epochs over the windows.
        calibration: ``"auto"`` (Platt vs isotonic by 5-fold CV log-loss on val), ``"platt"``,
            ``"isotonic"`` or ``"none"``.
        window_tokens: Tokens per window (capped by the encoder's max sequence length).
        stride: Tokens between window starts.
        max_windows: Windows per text at most (the text's score is the max over them).
        fit_on: ``"train"``: head on train, calibration on val. ``"train+val"``: hyper-parameters as
            chosen on val, then the head is refitted on train+val (val is the most recent data before
            test: date drift), with calibration fitted on out-of-fold val logits (heads trained on
            train + the other val folds); the card's val metrics are then out-of-fold too.
        refit_folds: Val folds of the out-of-fold fits when ``fit_on="train+val"`` (>= 2).
        limit: Cap on training examples (tests / quick runs); val and test are capped alike by
            :func:`~safecascade.training.fast_train.train_from_benchmark`.
        verdict_weight: Weight of each logged-verdict row relative to a labelled row.
        source_weights: ``(source, weight)`` pairs weighting labelled examples by their ``source``.
        weak_label_weight: Multiplies the weight of a weak label (an example's ``weak`` policies:
            BeaverTails' and Safety-Tuned LLaMAs' rewritten red-team prompts are labelled for
            harmful requests by a model's answer, about a third of them innocuous) for the heads
            and the lexical block; the row's other labels keep their weight, and the encoder's
            contrastive fine-tune sees the rows as they are.
        static_dims: PCA dimensions of the model2vec distillation (static tier).
        int8: Also write ``model.int8.onnx``, kept only when its val F1 drop is < 0.005 (fast tier).
        seed: Seed of every random choice (folds, MLP, resampling, fine-tuning pairs).
        threads: CPU threads for ONNX Runtime and torch.
        finetune: SetFit-style contrastive fine-tuning of the encoder before export
            (:mod:`safecascade.training.finetune`; fast tier only).
        finetune_pairs: Pairs sampled for fine-tuning.
        finetune_seq_len: Tokens per window while fine-tuning.
        finetune_lr: Fine-tuning learning rate.
        finetune_max_seconds: Wall-clock cap on fine-tuning.
        finetune_benchmark: Fine-tune the encoder on this benchmark's train split instead of the
            training rows (e.g. ``jailbreak`` while the heads learn the multi-policy ``policies``
            benchmark); empty: the training rows. The tuned encoder is cached by its data, so
            the same fine-tuning is reused across recipes that share it.
        lexical: Fast tier: stack a hashed word-piece + character n-gram TF-IDF logit with the
            embedding head (``tiers/lexical.py``, ``training/lexical_train.py``); off = the embedding
            head alone (card format 1).
        lexical_C: Inverse regularisation of the lexical block's logistic regression.
        lexical_buckets: Hash buckets of the lexical features.
        stack_weighted: The policies whose stack (``training/lexical_train.py: fit_stack``) is fit
            on the val texts at their training weights (a real user prompt 16, a weak label
            ``weak_label_weight``, ...), as the heads are trained, instead of one each. The
            calibration that follows it stays unweighted. Each must be one of ``policies``.
        lowercase_copies: Multilingual tier: each training text is also read lower-cased, as a
            second window of the same row (the row's weight split between the two), so the heads
            score a text typed in lower case as they score it cased (the encoder reads case).
    """

    kind: str = "fast"
    benchmark: str = "jailbreak"
    policies: tuple[str, ...] = ("jailbreak",)
    encoder: str = "default"
    head: str = "mlp"
    hidden: int = 256
    alpha: float = 1e-3
    C: float = 4.0
    max_iter: int = 300
    epochs: int = 40
    calibration: str = "auto"
    window_tokens: int = 256
    stride: int = 224
    max_windows: int = 8
    fit_on: str = "train+val"
    refit_folds: int = 3
    limit: int | None = None
    verdict_weight: float = 1.0
    source_weights: tuple[tuple[str, float], ...] = ()
    weak_label_weight: float = 1.0
    static_dims: int = 256
    int8: bool = False
    seed: int = 0
    threads: int = 2
    finetune: bool = False
    finetune_pairs: int = 4000
    finetune_seq_len: int = 128
    finetune_lr: float = 2e-5
    finetune_max_seconds: float = 1200.0
    finetune_benchmark: str = ""
    lexical: bool = True
    lexical_C: float = 30.0
    lexical_buckets: int = 1 << 20
    stack_weighted: tuple[str, ...] = ()
    lowercase_copies: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("fast", "static", "multilingual"):
            raise ValueError(f"kind must be fast|static|multilingual, got {self.kind!r}")
        if self.head not in ("lr", "mlp"):
            raise ValueError(f"head must be lr|mlp, got {self.head!r}")
        if self.epochs < 1 or self.hidden < 1:
            raise ValueError(f"epochs and hidden must be >= 1, got {self.epochs}, {self.hidden}")
        if self.fit_on not in ("train", "train+val"):
            raise ValueError(f"fit_on must be train|train+val, got {self.fit_on!r}")
        if self.refit_folds < 2:
            raise ValueError(f"refit_folds must be >= 2, got {self.refit_folds}")
        if self.calibration not in ("auto", "platt", "isotonic", "none"):
            raise ValueError(f"calibration must be auto|platt|isotonic|none, got {self.calibration!r}")
        if not self.policies:
            raise ValueError("at least one policy is required")
        if self.finetune and self.kind != "fast":
            raise ValueError("finetune applies to the fast tier only")
        if self.finetune:
            self.finetune_config()  # validates the finetune_* fields
        if self.lowercase_copies and self.kind != "multilingual":
            raise ValueError("lowercase_copies applies to the multilingual tier only")
        if not 0 < self.weak_label_weight <= 1:
            raise ValueError(f"weak_label_weight must be in (0, 1], got {self.weak_label_weight}")
        if not self.lexical_C > 0:
            raise ValueError(f"lexical_C must be > 0, got {self.lexical_C}")
        unknown = sorted(set(self.stack_weighted) - set(self.policies))
        if unknown:
            raise ValueError(f"stack_weighted names {unknown}, which this config does not train (its policies: {list(self.policies)})")

    def for_policies(self, policies: tuple[str, ...], **changes: Any) -> "TrainConfig":
        """This config training ``policies`` instead (with ``changes``), ``stack_weighted`` narrowed
        to the policies it still trains."""
        return replace(self, policies=policies, stack_weighted=tuple(p for p in self.stack_weighted if p in policies), **changes)

    def finetune_config(self) -> FinetuneConfig:
        """The :class:`~safecascade.training.finetune.FinetuneConfig` these fields describe."""
        return FinetuneConfig(pairs=self.finetune_pairs, seq_len=self.finetune_seq_len, lr=self.finetune_lr,
                              max_seconds=self.finetune_max_seconds, seed=self.seed, threads=self.threads)

    @property
    def window(self) -> WindowConfig:
        """The token-window layout these fields describe."""
        return WindowConfig(window_tokens=self.window_tokens, stride=self.stride, max_windows=self.max_windows)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``policies`` a list, ``source_weights`` a dict): MLflow params and the card."""
        d = asdict(self)
        d["policies"] = list(self.policies)
        d["stack_weighted"] = list(self.stack_weighted)
        d["source_weights"] = dict(self.source_weights)
        return d
