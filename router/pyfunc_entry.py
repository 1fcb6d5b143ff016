"""MLflow "models from code" entry point of a registered router (see :mod:`safecascade.router.pyfunc_model`).

MLflow copies this file into every logged router model and runs it when the model is loaded;
it only names the model class, so nothing is pickled and the installed safecascade is what runs.
"""

from __future__ import annotations

from mlflow.models import set_model  # heavy, optional: only MLflow's model loader runs this file

from safecascade.router.pyfunc_model import RouterModel

set_model(RouterModel())
