"""A merged decoder's 8-bit products as integer products with fixed activation steps (fast on many rows).

    rapport-train static-int8 exported_models/rapport-chat-persona [--calibration 64] [--alpha 0.5]

onnxruntime's 8-bit ``MatMulNBits`` quantizes activations itself, per block of 32 of every row, and its
kernel is slow on many rows: a decoding step for 50 users spent 11 of its 17-19 ms in it (issue 24). This
rewrites every ``MatMulNBits`` of both branches of ``decoder_model_merged.onnx`` (the first step and every
step after it) as
- one quantization per activation tensor, shared by the products that read it: each channel divided by
  its balance factor (SmoothQuant, Xiao et al. 2023: ``alpha`` of an outlier channel's range moves into the
  weights), then ``QuantizeLinear`` with one fixed step and zero point, from the smallest and largest value
  the tensor took over calibration prompts of the training split (never valid or test);
- ``MatMulIntegerToFloat`` (u8 x 7-bit s8, int32 sums) times the activation step and each column's weight
  scale.
The steps are constants, so a row's result never depends on the other rows of the batch, and a quantized
value is a ``QuantizeLinear`` and one product: no per-row maximum to find at run time.

Measured on the persona model (issue 24, AMD EPYC with VNNI; README, Benchmark): a 50-user batch 1.3-1.4x
faster (1.02-1.07x CTranslate2 int8 in turns), a decoding step at one row 1.24x slower (the integer product
is slower than ``MatMulNBits`` at one row, and the 75 quantizer nodes add 0.34 ms), quality inside the
shipped decoder's interval. The shipped model keeps ``MatMulNBits``: most conversations are one row.

The weights keep 7 bits (-63..63) with a scale per output column, as ``rows-int8`` does: no pair of
products in the u8 x s8 kernels of CPUs without VNNI (``vpmaddubsw``: 2 x 255 x 63 = 32,130) overflows
int16, so the integer sums are exact on every x86-64 CPU. A weight that both branches read (the joined q,
k, v products, the output layer) gets one balance from both branches' activations and is stored once.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_merge import all_graphs
from .row_quantize import _require_opset, column_int7, smoothing, weight_nk

LEVELS = 255  # u8 codes
STATIC_PREFIX = "sq"  # the names of what this writes (besides the products' own)


@dataclass
class ChannelRange:
    """Each channel's smallest and largest value of one activation tensor over the calibration runs."""

    low: np.ndarray
    high: np.ndarray

    def add(self, value: np.ndarray) -> None:
        """Widen by a run's value (..., K)."""
        rows = value.reshape(-1, value.shape[-1])
        self.low = np.minimum(self.low, rows.min(axis=0))
        self.high = np.maximum(self.high, rows.max(axis=0))

    @classmethod
    def of(cls, value: np.ndarray) -> "ChannelRange":
        """The ranges of one run's value (..., K)."""
        rows = value.reshape(-1, value.shape[-1])
        return cls(rows.min(axis=0), rows.max(axis=0))


def _if_branches(model: onnx.ModelProto) -> dict[str, onnx.GraphProto]:
    """The merged decoder's two branches by attribute name (``then_branch``: with the cache)."""
    node = next(n for n in model.graph.node if n.op_type == "If")
    return {a.name: a.g for a in node.attribute}


def products(model: onnx.ModelProto) -> list[tuple[str, onnx.NodeProto]]:
    """(branch name, node) of every 8-bit ``MatMulNBits`` of the merged decoder's branches."""
    out = []
    for name, branch in _if_branches(model).items():
        for node in branch.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "MatMulNBits" and attrs.get("bits") == 8:
                out.append((name, node))
    return out


def branch_probe(model: onnx.ModelProto, branch: str, outputs: list[str]) -> onnx.ModelProto:
    """One branch of the merged decoder as a model of its own, returning ``outputs`` (tensors inside it)."""
    graph = _if_branches(model)[branch]
    probe = helper.make_graph(list(graph.node), f"probe_{branch}",
                              [i for i in model.graph.input if i.name != "use_cache_branch"],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None) for x in outputs],
                              [*model.graph.initializer, *graph.initializer])
    out = helper.make_model(probe, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def activation_ranges(model: onnx.ModelProto, feeds: dict[str, list[dict[str, np.ndarray]]]
                      ) -> dict[tuple[str, str], ChannelRange]:
    """Per-channel ranges of every product input, keyed by (branch, tensor), over each branch's ``feeds``
    (decoder inputs as the engine feeds them: ``else_branch`` the first steps, ``then_branch`` the rest)."""
    import onnxruntime as ort

    ranges: dict[tuple[str, str], ChannelRange] = {}
    for branch, runs in feeds.items():
        names = sorted({node.input[0] for b, node in products(model) if b == branch})
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the probe keeps the other branch's weights, unused
        session = ort.InferenceSession(branch_probe(model, branch, names).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        for feed in runs:
            values = session.run(names, {k: v for k, v in feed.items() if k in wanted})
            for name, value in zip(names, values):
                key = (branch, name)
                if key in ranges:
                    ranges[key].add(value)
                else:
                    ranges[key] = ChannelRange.of(value)
    return ranges


def balance_groups(model: onnx.ModelProto) -> list[tuple[set[tuple[str, str]], set[str]]]:
    """Activation tensors (branch, name) and weights that must share one balance: a tensor read by several
    products, and a weight read in both branches. Connected groups of the tensor-weight graph."""
    parent: dict[object, object] = {}

    def find(x: object) -> object:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for branch, node in products(model):
        parent[find(("x", branch, node.input[0]))] = find(("w", node.input[1]))
    groups: dict[object, tuple[set, set]] = {}
    for item in list(parent):
        tensors, weights = groups.setdefault(find(item), (set(), set()))
        if item[0] == "x":
            tensors.add(item[1:])
        else:
            weights.add(item[1])
    return list(groups.values())


def step_and_zero(low: float, high: float) -> tuple[float, int]:
    """A fixed u8 step and zero point covering [low, high] (and 0, so that zero is exact)."""
    low, high = min(low, 0.0), max(high, 0.0)
    step = max(high - low, 1e-8) / LEVELS
    return step, int(np.clip(np.round(-low / step), 0, LEVELS))


def static_int8(model: onnx.ModelProto, ranges: dict[tuple[str, str], ChannelRange], alpha: float = 0.5) -> int:
    """Rewrite every 8-bit ``MatMulNBits`` of both branches in place (``ranges``: ``activation_ranges``);
    returns how many."""
    found = products(model)
    if not found:
        return 0
    inits = {i.name: i for i in model.graph.initializer}
    nodes_of = {}
    for _, node in found:
        nodes_of.setdefault(node.input[1], node)
    float_weights = {w: weight_nk(node, inits) for w, node in nodes_of.items()}  # (N, K)
    factor: dict[tuple[str, str], np.ndarray] = {}  # (branch, tensor) -> its channels' balance s
    balance: dict[tuple[str, str], str] = {}  # (branch, tensor) -> the initializer holding 1 / s
    stored: dict[str, tuple[str, str]] = {}  # weight -> its 7-bit codes and column scales
    extra: list[onnx.TensorProto] = []
    for g, (tensors, weights) in enumerate(balance_groups(model)):
        channel_max = np.max([np.maximum(np.abs(ranges[t].low), np.abs(ranges[t].high)) for t in tensors], axis=0)
        s = smoothing(channel_max, [float_weights[w] for w in sorted(weights)], alpha)
        extra.append(numpy_helper.from_array((1.0 / s).astype(np.float32), f"{STATIC_PREFIX}{g}_balance"))
        for t in tensors:
            factor[t], balance[t] = s, f"{STATIC_PREFIX}{g}_balance"
        for w in sorted(weights):
            codes, scales = column_int7(float_weights[w] * s[None, :])
            stored[w] = (f"{w}_s7", f"{w}_s7_scales")
            extra += [numpy_helper.from_array(codes, stored[w][0]), numpy_helper.from_array(scales, stored[w][1])]
    product_ids = {id(node) for _, node in found}
    for branch_name, branch in _if_branches(model).items():
        quantized: dict[str, tuple[str, str, str]] = {}  # tensor -> u8 codes, step, zero point
        rewritten: list[onnx.NodeProto] = []
        for node in branch.node:
            if id(node) not in product_ids:
                rewritten.append(node)
                continue
            x = node.input[0]
            key = (branch_name, x)
            if x not in quantized:
                tag = f"{STATIC_PREFIX}_{branch_name[0]}{len(quantized)}"
                r, s = ranges[key], factor[key]
                step, zero = step_and_zero(float((r.low / s).min()), float((r.high / s).max()))
                extra += [numpy_helper.from_array(np.array(step, np.float32), f"{tag}_step"),
                          numpy_helper.from_array(np.array(zero, np.uint8), f"{tag}_zero")]
                rewritten += [helper.make_node("Mul", [x, balance[key]], [f"{tag}_balanced"], name=f"{tag}_balanced"),
                              helper.make_node("QuantizeLinear", [f"{tag}_balanced", f"{tag}_step", f"{tag}_zero"],
                                               [f"{tag}_u8"], name=f"{tag}_u8")]
                quantized[x] = (f"{tag}_u8", f"{tag}_step", f"{tag}_zero")
            codes, step, zero = quantized[x]
            w7, w7_scales = stored[node.input[1]]
            if len(node.input) > 5 and node.input[5]:
                raise ValueError(f"{node.name}: a MatMulNBits with a bias input (onnx_quantize writes none)")
            rewritten.append(helper.make_node("MatMulIntegerToFloat", [codes, w7, step, w7_scales, zero],
                                              list(node.output), name=f"{node.name}_int", domain="com.microsoft"))
        del branch.node[:]
        branch.node.extend(rewritten)
    model.graph.initializer.extend(extra)
    _require_opset(model, 21)
    used = {i for graph in all_graphs(model.graph) for node in graph.node for i in node.input}
    for init in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(init)
    return len(found)


def record_decoder_feeds(model, sources: list[list[int]], targets: list[list[int]], steps: int = 24,
                         batch: int = 16, min_steps: int = 0) -> dict[str, list[dict[str, np.ndarray]]]:
    """The decoder inputs of ``model`` (a ``Seq2SeqModel`` on a merged decoder) as the engine feeds them, by
    branch: its greedy replies to ``sources`` (``else_branch`` the first step, ``then_branch`` every later one;
    at least ``min_steps`` tokens each) and the scoring of ``targets`` given ``sources`` (``else_branch``: every
    target token at once)."""
    from engine.model.generation import GenerationConfig

    feeds: dict[str, list[dict[str, np.ndarray]]] = {"else_branch": [], "then_branch": []}
    session = model.decoder
    original = session.run

    def recording_run(output_names, feed, *args, **kwargs):
        branch = "then_branch" if bool(feed["use_cache_branch"][0]) else "else_branch"
        feeds[branch].append(dict(feed))  # the engine replaces arrays between steps, never writes into them
        return original(output_names, feed, *args, **kwargs)

    session.run = recording_run
    try:
        for start in range(0, len(sources), batch):
            model.generate_batch(sources[start:start + batch], GenerationConfig("greedy", max_new_tokens=steps,
                                                                                  min_new_tokens=min_steps))
            model.score(sources[start:start + batch], targets[start:start + batch])
    finally:
        del session.run
    return feeds


def training_examples(model_dir: Path, n: int, seed: int = 0) -> tuple[object, list[list[int]], list[list[int]]]:
    """The export's ``Seq2SeqModel`` and the prompts and true replies of ``n`` training examples (never valid or
    test), half persona-grounded and half chit-chat, built as the engine and ``training.int8_quality`` build them."""
    import random

    from engine.config import DEFAULT_ENCODER

    from .data import DEFAULT_DATA
    from .evaluate import Evaluator, Sizes
    from .persona import load_persona_splits, persona_examples

    ev = Evaluator(model_dir, DEFAULT_ENCODER, DEFAULT_DATA, Sizes(), seed)
    persona = [ex for c in load_persona_splits()["train"] for ex in persona_examples(c)]
    persona = random.Random(f"{seed}:static-int8").sample(persona, n // 2)
    chitchat = ev.sample("train", n - n // 2, "static-int8 calibration")
    sources = ([ev.encoder_io.encode(ex, list(ex.user_facts), list(ex.bot_facts)).source for ex in persona]
               + [ev.source(ex, "true") for ex in chitchat])
    targets = [ev.target(ex.reply) for ex in persona + chitchat]
    return ev.model, sources, targets


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train static-int8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="an export folder whose decoder_model_merged.onnx has 8-bit MatMulNBits")
    p.add_argument("--out", type=Path, help="where to write the decoder (default: in place)")
    p.add_argument("--calibration", type=int, default=64, help="training examples whose replies set the steps")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength")
    args = p.parse_args(argv)
    path = args.model / "decoder_model_merged.onnx"
    model = onnx.load(str(path))
    ranges = activation_ranges(model, record_decoder_feeds(*training_examples(args.model, args.calibration)))
    count = static_int8(model, ranges, args.alpha)
    onnx.save(model, str(args.out or path))
    print(f"{args.out or path}: {count} MatMuls as u8 x 7-bit s8 products with fixed activation steps")


if __name__ == "__main__":
    main()
