"""The torch-trained MLP head: learns, is seeded, and its layers are what the served heads run."""

from __future__ import annotations

import numpy as np
import pytest

from safecascade.training.heads import fit_head, fit_mlp, sklearn_logit
from safecascade.training.train_config import TrainConfig


def _xor(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(int)  # not linearly separable
    return X, y


def test_mlp_learns_what_a_linear_head_cannot() -> None:
    X, y = _xor()
    w = np.ones(len(y))
    cfg = TrainConfig(head="mlp", hidden=32, epochs=80, alpha=1e-4)
    est, head = fit_head(X, y, w, cfg, "jailbreak")
    Xt, yt = _xor(seed=1)
    acc = ((head.logit(Xt) > 0) == yt).mean()
    _, lin = fit_head(X, y, w, TrainConfig(head="lr"), "jailbreak")
    lin_acc = ((lin.logit(Xt) > 0) == yt).mean()
    assert acc > 0.9 and lin_acc < 0.7, (acc, lin_acc)
    assert [W.shape for W, _ in head.layers] == [(4, 32), (32, 1)]
    np.testing.assert_allclose(sklearn_logit(est, Xt), head.logit(Xt))


def test_mlp_is_seeded_and_weights_count() -> None:
    X, y = _xor(200)
    w = np.ones(len(y))
    a = fit_mlp(X, y, w, hidden=8, weight_decay=1e-3, epochs=3, seed=5, threads=1)
    b = fit_mlp(X, y, w, hidden=8, weight_decay=1e-3, epochs=3, seed=5, threads=1)
    c = fit_mlp(X, y, w, hidden=8, weight_decay=1e-3, epochs=3, seed=6, threads=1)
    assert all(np.array_equal(p, q) for (p, _), (q, _) in zip(a, b))
    assert not np.array_equal(a[0][0], c[0][0])
    # all the weight on the positives: every logit goes up
    w_pos = np.where(y == 1, 50.0, 0.02)
    d = fit_mlp(X, y, w_pos, hidden=8, weight_decay=1e-3, epochs=3, seed=5, threads=1)
    def logit(layers):  # type: ignore[no-untyped-def]
        h = np.maximum(X @ layers[0][0] + layers[0][1], 0)
        return (h @ layers[1][0] + layers[1][1])[:, 0]
    assert (logit(d) > 0).mean() > (logit(a) > 0).mean()


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"hidden": 0}])
def test_bad_mlp_settings_fail_at_config(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="epochs and hidden"):
        TrainConfig(head="mlp", **bad)
