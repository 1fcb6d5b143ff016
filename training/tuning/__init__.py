"""Threshold tuning: choose a router's escalation bands on a cost / F1 Pareto front.

* :mod:`~safecascade.training.tuning.job`: a tuning job (:class:`TuneOptions`, :func:`tune`, :class:`TuneResult`);
* :mod:`~safecascade.training.tuning.scores`: every tier's scores over labelled texts, cached on disk;
* :mod:`~safecascade.training.tuning.cost`: the final tier's assumed confusion matrix and the cost model;
* :mod:`~safecascade.training.tuning.sweep`: exact vectorised evaluation of bands, the search, the Pareto front;
* :mod:`~safecascade.training.tuning.report`: the tuned YAML, CSV/PNG outputs and the MLflow run;
* :mod:`~safecascade.training.tuning.tune_cli`: ``safecascade tune``.
"""

from __future__ import annotations

from safecascade.training.tuning.cost import CostModel, SafeguardAssumption
from safecascade.training.tuning.job import TuneOptions, TuneResult, tune, write_outputs
from safecascade.training.tuning.scores import ScoreTable, TierScores, score_router
from safecascade.training.tuning.sweep import Objective, TuneInfeasible

__all__ = ["CostModel", "Objective", "SafeguardAssumption", "ScoreTable", "TierScores", "TuneInfeasible", "TuneOptions",
           "TuneResult", "score_router", "tune", "write_outputs"]
