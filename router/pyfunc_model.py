"""The MLflow pyfunc wrapper around a :class:`~safecascade.router.cascade.Router`.

A registered router (see :mod:`safecascade.router.registry`) is an MLflow ``python_function``
model whose only artifact, ``router``, is a self-contained directory: ``router.yaml`` (paths
rewritten to point inside the directory), the policy files, heuristic rules, replay verdicts and
the ONNX / static tier model directories. :meth:`RouterModel.load_context` builds the Router from
it once per process; :meth:`RouterModel.predict` scores a batch with
:meth:`Router.classify_batch`.

Input: a pandas DataFrame with a ``text`` column (a single unnamed column is accepted too, as
``mlflow.pyfunc.spark_udf`` passes ordinal column names), a Series, or a list of strings.
Output: one row per text with the columns of :func:`output_columns` - ``action``, ``flagged``,
``score``, ``tier``, ``reason``, ``rule_ids`` (``;``-joined), ``text_hash``, ``config_name``,
``config_hash``, ``latency_ms`` and ``score_<policy>`` for every policy (NaN when the deciding
tier gave that policy no score, e.g. an empty input).

This module imports mlflow at import time (it subclasses ``mlflow.pyfunc.PythonModel``); only
the registry and MLflow's model loader import it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import mlflow.pyfunc  # heavy, optional: this module is the MLflow model class, imported only with mlflow
import numpy as np

from safecascade.mlflow_store import ROUTER_ARTIFACT_KEY, ROUTER_CONFIG_NAME
from safecascade.router.cascade import Router
from safecascade.router.config import load_config

log = logging.getLogger(__name__)

_BASE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("action", "string"),
    ("flagged", "boolean"),
    ("score", "double"),
    ("tier", "string"),
    ("reason", "string"),
    ("rule_ids", "string"),
    ("text_hash", "string"),
    ("config_name", "string"),
    ("config_hash", "string"),
    ("latency_ms", "double"),
)


def output_columns(policies: Sequence[str]) -> list[tuple[str, str]]:
    """``(column, MLflow type)`` of the prediction frame for a router scoring ``policies``."""
    return [*_BASE_COLUMNS, *((f"score_{p}", "double") for p in policies)]


def model_signature(policies: Sequence[str]) -> Any:
    """One unnamed string column in -> the columns of :func:`output_columns` out.

    The input column is unnamed so that MLflow's schema enforcement accepts a DataFrame with a
    ``text`` (or any single) column, a Series and a list of strings alike; the named output
    schema lets ``mlflow.pyfunc.spark_udf`` infer a struct result type.
    """
    from mlflow.models import ModelSignature  # heavy, optional
    from mlflow.types.schema import ColSpec, Schema  # heavy, optional

    return ModelSignature(inputs=Schema([ColSpec("string")]),
                          outputs=Schema([ColSpec(t, c) for c, t in output_columns(policies)]))


def texts_from_input(model_input: Any) -> list[str]:
    """The texts of a pyfunc input: DataFrame (``text`` column, or its only column), Series,
    dict with a ``text`` list, list/tuple/ndarray of strings, or one string."""
    import pandas as pd  # heavy, optional

    if isinstance(model_input, pd.DataFrame):
        if "text" in model_input.columns:
            col = model_input["text"]
        elif model_input.shape[1] == 1:
            col = model_input.iloc[:, 0]
        else:
            raise ValueError(f"expected a DataFrame with a 'text' column, got columns {list(model_input.columns)}")
        values = col.tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, dict):
        if "text" not in model_input:
            raise ValueError(f"expected a mapping with a 'text' key, got keys {sorted(model_input)}")
        v = model_input["text"]
        values = [v] if isinstance(v, str) else list(v)
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, (list, tuple, np.ndarray)):
        values = list(np.asarray(model_input, dtype=object).ravel()) if isinstance(model_input, np.ndarray) else list(model_input)
    else:
        raise TypeError(f"expected a DataFrame with a 'text' column, a Series or a list of strings, got {type(model_input).__name__}")
    # Missing values (None / NaN from Spark nulls) are scored as empty texts (the config's on_empty applies).
    return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def decisions_frame(decisions: Sequence[Any], policies: Sequence[str]) -> Any:
    """Decisions -> the prediction DataFrame (columns of :func:`output_columns`, in that order)."""
    import pandas as pd  # heavy, optional

    rows = []
    for d in decisions:
        row = {
            "action": d.action, "flagged": bool(d.flagged), "score": float(d.score), "tier": d.tier,
            "reason": d.reason, "rule_ids": ";".join(d.rule_ids), "text_hash": d.text_hash,
            "config_name": d.config_name, "config_hash": d.config_hash, "latency_ms": float(d.latency_ms),
        }
        for p in policies:
            v = d.policies.get(p)
            row[f"score_{p}"] = float(v.score) if v is not None and v.score is not None else float("nan")
        rows.append(row)
    cols = [c for c, _ in output_columns(policies)]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.astype({"flagged": bool, "score": "float64", "latency_ms": "float64",
                         **{f"score_{p}": "float64" for p in policies}})


class RouterModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc model: a Router built once per process from the packaged ``router`` artifact."""

    def __init__(self) -> None:
        self.router: Any = None
        self.policies: list[str] = []

    def load_context(self, context: Any) -> None:
        """Build the Router from ``context.artifacts['router']/router.yaml``."""
        root = Path(context.artifacts[ROUTER_ARTIFACT_KEY])
        config = load_config(root / ROUTER_CONFIG_NAME)
        self.router = Router.load(config)
        self.policies = list(self.router.policies)
        log.info("pyfunc router %s (%s) ready from %s", config.name, config.sha, root)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        """Classify the texts of ``model_input``; one output row per text (see the module doc)."""
        if self.router is None:  # load_context is always called by MLflow; guard for direct use
            raise RuntimeError("RouterModel.predict called before load_context")
        texts = texts_from_input(model_input)
        decisions = self.router.classify_batch(texts) if texts else []
        return decisions_frame(decisions, self.policies)

