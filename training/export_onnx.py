"""Export: transformer encoder -> ONNX (mean pooling + L2 norm inside), heads as ONNX ops, int8.

The served graph (``model.onnx``) has inputs ``input_ids``, ``attention_mask`` (int64,
[batch, seq]) and outputs ``probs`` ([batch, n_policies], calibrated probabilities, policy
order as in the card), ``embedding`` ([batch, dim], L2-normalised mean pooling) and ``logits``
([batch, n_policies], the heads' raw logits before calibration).

Heads are described by a :class:`HeadSpec` (plain numpy arrays, no sklearn at serve time):
dense layers (relu between, none after the last) producing one logit ``z`` per policy, then a
calibration map: Platt (``sigmoid(a*z+b)``) or isotonic (piecewise-linear interpolation over
``z`` with clipping, written as ``y0 + sum_k slope_k * (clip(z, x_k, x_{k+1}) - x_k)``), or
``none`` (``sigmoid(z)``). All three are exported as plain ONNX ops.

torch / onnx are imported inside the functions (this module is only used for training).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safecascade.tiers.lexical import apply_calibration
from safecascade.tiers.onnx_encoder import length_batches

log = logging.getLogger(__name__)

OPSET = 17


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Maps a head logit to a probability."""

    method: str  # "platt" | "isotonic" | "none"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def apply(self, z: np.ndarray) -> np.ndarray:
        """Reference (float64) implementation of the map (the served tiers' ``apply_calibration``)."""
        return apply_calibration(self.to_dict(), z)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method}
        if self.method == "platt":
            d.update(a=self.a, b=self.b)
        if self.method == "isotonic":
            d.update(x=list(self.x), y=list(self.y))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        return cls(method=d["method"], a=float(d.get("a", 1.0)), b=float(d.get("b", 0.0)),
                   x=tuple(float(v) for v in d.get("x", ())), y=tuple(float(v) for v in d.get("y", ())))


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """One policy's head: dense layers ``(W [in, out], b [out])`` with relu between them."""

    policy: str
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    calibration: Calibration = field(default_factory=lambda: Calibration(method="none"))

    def logit(self, x: np.ndarray) -> np.ndarray:
        """Reference forward pass (float64) to the logit, shape [n]."""
        h = np.asarray(x, dtype=np.float64)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.astype(np.float64) + b.astype(np.float64)
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h[:, 0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.calibration.apply(self.logit(x))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {}
        for i, (w, b) in enumerate(self.layers):
            out[f"{prefix}W{i}"] = w.astype(np.float32)
            out[f"{prefix}b{i}"] = b.astype(np.float32)
        return out


def heads_to_npz(heads: Sequence[HeadSpec], path: str | Path) -> None:
    """Save heads (for the numpy-served static tier); calibration goes in the card."""
    arrays: dict[str, np.ndarray] = {}
    for k, h in enumerate(heads):
        arrays.update(h.arrays(f"h{k}_"))
    np.savez(path, **arrays)


# --------------------------------------------------------------------------- encoder export


def export_encoder(st_model: Any, out_path: str | Path, *, opset: int = OPSET) -> Path:
    """Export a sentence-transformers model's transformer + mean pooling + L2 norm to ONNX.

    Dynamic batch and sequence axes; inputs ``input_ids``, ``attention_mask``; output ``embedding``.
    """
    import torch  # heavy, optional (torch)

    transformer = st_model[0].auto_model
    transformer.eval()

    class _Encoder(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.m(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(out.dtype)
            pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    enc = _Encoder(transformer).eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    out_path = Path(out_path)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            enc, (ids, mask), str(out_path),
            input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "embedding": {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
    log.info("exported encoder to %s", out_path)
    return out_path


def torch_embed_windows(st_model: Any, windows: Sequence[np.ndarray], *, batch_size: int = 32) -> np.ndarray:
    """Training-time reference: the sentence-transformers model (torch) on the same token windows,
    batched exactly as the served ONNX path batches them (:func:`length_batches`)."""
    import torch  # heavy, optional (torch)

    st_model.eval()
    dim_fn = getattr(st_model, "get_embedding_dimension", None) or st_model.get_sentence_embedding_dimension
    res = np.zeros((len(windows), dim_fn()), dtype=np.float32)
    order = np.argsort([len(w) for w in windows], kind="stable")
    with torch.no_grad():
        for lo, hi in length_batches([len(windows[i]) for i in order], batch_size):
            idx = order[lo:hi]
            length = max(len(windows[i]) for i in idx)
            ids = torch.zeros((len(idx), length), dtype=torch.long)
            mask = torch.zeros((len(idx), length), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(windows[i])] = torch.from_numpy(windows[i])
                mask[r, : len(windows[i])] = 1
            feats = st_model({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})
            emb = torch.nn.functional.normalize(feats["sentence_embedding"], p=2.0, dim=1)
            res[idx] = emb.numpy()
    return res


# --------------------------------------------------------------------------- heads as ONNX ops


def _head_nodes(h: HeadSpec, k: int, inp: str) -> tuple[list[Any], list[Any], str]:
    from onnx import helper, numpy_helper  # heavy, optional (onnx)

    nodes, inits = [], []
    cur = inp
    p = f"head{k}_"
    for i, (w, b) in enumerate(h.layers):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"{p}W{i}"), numpy_helper.from_array(b.astype(np.float32), f"{p}b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"{p}W{i}", f"{p}b{i}"], [f"{p}z{i}"]))
        cur = f"{p}z{i}"
        if i < len(h.layers) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"{p}a{i}"]))
            cur = f"{p}a{i}"
    z = cur  # [batch, 1]
    cal = h.calibration
    out = f"{p}prob"
    if cal.method in ("platt", "none"):
        a, b = (cal.a, cal.b) if cal.method == "platt" else (1.0, 0.0)
        inits += [numpy_helper.from_array(np.array([a], np.float32), f"{p}ca"), numpy_helper.from_array(np.array([b], np.float32), f"{p}cb")]
        nodes += [helper.make_node("Mul", [z, f"{p}ca"], [f"{p}cz"]), helper.make_node("Add", [f"{p}cz", f"{p}cb"], [f"{p}cz2"]),
                  helper.make_node("Sigmoid", [f"{p}cz2"], [out])]
    elif cal.method == "isotonic":
        x = np.asarray(cal.x, np.float64)
        y = np.asarray(cal.y, np.float64)
        keep = np.diff(x) > 0
        lo, hi = x[:-1][keep], x[1:][keep]
        slope = (np.diff(y)[keep]) / (hi - lo)
        if lo.size == 0:  # constant map
            lo, hi, slope = np.array([0.0]), np.array([0.0]), np.array([0.0])
        inits += [numpy_helper.from_array(lo.astype(np.float32), f"{p}lo"), numpy_helper.from_array(hi.astype(np.float32), f"{p}hi"),
                  numpy_helper.from_array(slope.astype(np.float32), f"{p}sl"), numpy_helper.from_array(np.array([y[0]], np.float32), f"{p}y0"),
                  numpy_helper.from_array(np.array([1], np.int64), f"{p}ax")]
        nodes += [helper.make_node("Min", [z, f"{p}hi"], [f"{p}t1"]), helper.make_node("Max", [f"{p}t1", f"{p}lo"], [f"{p}t2"]),
                  helper.make_node("Sub", [f"{p}t2", f"{p}lo"], [f"{p}t3"]), helper.make_node("Mul", [f"{p}t3", f"{p}sl"], [f"{p}t4"]),
                  helper.make_node("ReduceSum", [f"{p}t4", f"{p}ax"], [f"{p}t5"], keepdims=1),
                  helper.make_node("Add", [f"{p}t5", f"{p}y0"], [f"{p}t6"]),
                  helper.make_node("Clip", [f"{p}t6", "cal_zero", "cal_one"], [out])]
    else:
        raise ValueError(f"unknown calibration method {cal.method!r}")
    return nodes, inits, out


def attach_heads(encoder_path: str | Path, heads: Sequence[HeadSpec], out_path: str | Path) -> Path:
    """Append per-policy heads to an encoder graph: adds outputs ``probs`` [batch, n_policies]
    (calibrated) and ``logits`` (the heads' raw logits, which the stacked lexical block uses)."""
    import onnx  # heavy, optional (onnx)
    from onnx import TensorProto, helper, numpy_helper  # heavy, optional (onnx)

    model = onnx.load(str(encoder_path))
    g = model.graph
    emb = "embedding"
    if emb not in [o.name for o in g.output]:
        raise ValueError(f"{encoder_path}: encoder graph has no 'embedding' output")
    g.initializer.extend([numpy_helper.from_array(np.array(0.0, np.float32), "cal_zero"),
                          numpy_helper.from_array(np.array(1.0, np.float32), "cal_one")])
    probs, logits = [], []
    for k, h in enumerate(heads):
        nodes, inits, out = _head_nodes(h, k, emb)
        g.node.extend(nodes)
        g.initializer.extend(inits)
        probs.append(out)
        logits.append(f"head{k}_z{len(h.layers) - 1}")
    g.node.append(helper.make_node("Concat", probs, ["probs"], axis=1))
    g.node.append(helper.make_node("Concat", logits, ["logits"], axis=1))
    g.output.insert(0, helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(heads)]))
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(heads)]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return Path(out_path)


def heads_only_model(dim: int, heads: Sequence[HeadSpec], out_path: str | Path) -> Path:
    """A small graph ``embedding -> probs`` (used to score cached embeddings through ONNX ops)."""
    import onnx  # heavy, optional (onnx)
    from onnx import TensorProto, helper, numpy_helper  # heavy, optional (onnx)

    nodes, inits, probs = [], [numpy_helper.from_array(np.array(0.0, np.float32), "cal_zero"),
                               numpy_helper.from_array(np.array(1.0, np.float32), "cal_one")], []
    for k, h in enumerate(heads):
        n, i, o = _head_nodes(h, k, "embedding")
        nodes += n
        inits += i
        probs.append(o)
    nodes.append(helper.make_node("Concat", probs, ["probs"], axis=1))
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(heads)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return Path(out_path)


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantisation of the encoder's MatMul weights (onnxruntime.quantization), with
    one scale per output channel.

    Per-channel scales kept the fine-tuned encoder's validation F1 within 0.004 of fp32 where one
    scale per tensor lost 0.017 (docs/fast-tier.md). The heads (the nodes writing ``head*``
    tensors, see :func:`attach_heads`) stay fp32: they are tiny and carry the calibrated boundary.
    """
    import onnx  # heavy, optional (onnx)
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional (the `fast` extra)

    # onnxruntime rewrites Gemm as MatMul + Add before it filters nodes, so the heads are kept out by
    # naming the encoder's MatMuls (named by the torch export) rather than by excluding the heads
    graph = onnx.load(str(src), load_external_data=False).graph
    encoder = [n.name for n in graph.node if n.op_type == "MatMul" and n.name and not any(o.startswith("head") for o in n.output)]
    if not encoder:
        raise ValueError(f"{src}: no named encoder MatMul nodes to quantise")
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     nodes_to_quantize=encoder, per_channel=True)
    return Path(dst)
