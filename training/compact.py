"""Compact storage for the shipped default models: embedding tables in 8 or 16 bits.

The fast tier's int8 graph keeps BERT's word-embedding table in float32 (30,522 x 384: about
47 MB of its 59 MB), because onnxruntime's dynamic quantisation quantises MatMul weights only.
:func:`compact_onnx_embeddings` stores every large Gather table as int8 with one scale per row
(symmetric) and dequantises only the gathered rows in the graph:

    Gather(table_int8, ids) -> Cast(float) -> Mul(Gather(row_scale, ids))

so a call costs one extra small gather and multiply, and the stored table is a quarter of the
size; or as float16 (``bits=16``: ``Gather(table_f16, ids) -> Cast(float)``, half the size). The static tier's token table (``static.npy``) is stored as float16 by
:func:`compact_static_table` (the tier widens it to float32 at load). Parity and quality against
the uncompressed files are measured by ``python -m safecascade.training.ship_models`` and written
into each model's provenance.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MIN_TABLE_ELEMENTS = 1_000_000  # position / token-type tables are small: left as they are


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: ``table ~= q * scale[:, None]``; an all-zero row gets scale 1."""
    t = np.asarray(table, dtype=np.float32)
    amax = np.abs(t).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(t / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def compact_onnx_embeddings(src: str | Path, dst: str | Path, *, bits: int = 8,
                            min_elements: int = MIN_TABLE_ELEMENTS) -> dict[str, Any]:
    """Rewrite ``src`` to ``dst`` with every float Gather table of ``min_elements`` or more stored
    as row-wise int8 (``bits=8``) or float16 (``bits=16``). Returns what was changed (tables,
    bytes before and after, the largest absolute error of a stored value)."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    changed: list[dict[str, Any]] = []
    new_nodes = []
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (table is None or axis != 0 or table.data_type != TensorProto.FLOAT or len(table.dims) != 2
                or int(np.prod(table.dims)) < min_elements):
            new_nodes.append(node)
            continue
        arr = numpy_helper.to_array(table)
        base, ids, out = table.name, node.input[1], node.output[0]
        if bits == 16:
            half = arr.astype(np.float16)
            graph.initializer.append(numpy_helper.from_array(half, f"{base}_f16"))
            new_nodes += [
                helper.make_node("Gather", [f"{base}_f16", ids], [f"{out}_f16"], axis=0, name=f"{node.name}_f16"),
                helper.make_node("Cast", [f"{out}_f16"], [out], to=TensorProto.FLOAT, name=f"{node.name}_cast"),
            ]
            stored, restored = half.nbytes, half.astype(np.float32)
        else:
            q, scale = quantize_rows(arr)
            graph.initializer.append(numpy_helper.from_array(q, f"{base}_rowq8"))
            graph.initializer.append(numpy_helper.from_array(scale[:, None], f"{base}_rowscale"))
            new_nodes += [
                helper.make_node("Gather", [f"{base}_rowq8", ids], [f"{out}_q8"], axis=0, name=f"{node.name}_q8"),
                helper.make_node("Cast", [f"{out}_q8"], [f"{out}_f32"], to=TensorProto.FLOAT, name=f"{node.name}_cast"),
                helper.make_node("Gather", [f"{base}_rowscale", ids], [f"{out}_scale"], axis=0, name=f"{node.name}_scale"),
                helper.make_node("Mul", [f"{out}_f32", f"{out}_scale"], [out], name=f"{node.name}_dequant"),
            ]
            stored, restored = q.nbytes + scale.nbytes, q.astype(np.float32) * scale[:, None]
        changed.append({"table": base, "shape": list(arr.shape), "bytes_before": int(arr.nbytes),
                        "bytes_after": int(stored), "max_abs_error": float(np.abs(restored - arr).max())})
    if not changed:
        raise ValueError(f"{src}: no float Gather table with >= {min_elements} elements to compact")
    users = {i for n in new_nodes for i in n.input}
    keep = [t for t in graph.initializer if t.name in users]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    log.info("compacted %s -> %s: %s", src, dst, [(c["table"], c["bytes_before"], c["bytes_after"]) for c in changed])
    return {"method": "gather-int8-rowwise" if bits == 8 else "gather-float16", "tables": changed}


def compact_static_table(path: str | Path) -> dict[str, Any]:
    """Store a static tier's ``static.npy`` as float16 in place; returns sizes and the largest error."""
    p = Path(path)
    arr = np.load(p)
    half = arr.astype(np.float16)
    if not np.isfinite(half).all():
        raise ValueError(f"{p}: values out of float16 range")
    np.save(p, half)
    return {"method": "float16", "bytes_before": int(arr.nbytes), "bytes_after": int(half.nbytes),
            "max_abs_error": float(np.abs(half.astype(np.float32) - arr).max())}
