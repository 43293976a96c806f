"""The merged decoder's with-past branch rebuilt from onnxruntime's fused operators.

    rapport-train fuse-decoder exported_models/rapport-chat-persona

The exporter writes each attention of a decoding step as some 40 small nodes (shapes, reshapes,
transposes, the cache's Concat, two MatMuls, a Softmax): about 900 nodes a step for 6 layers, and at
one row a step's time goes as much to running nodes as to reading weights. This rewrites the branch
that runs at every step after the first (``use_cache_branch`` true) as:
- one ``MatMulNBits`` for the self-attention's query, key and value (the three weights side by side:
  the same 8-bit codes and scales, so the same products) and ``MultiHeadAttention`` with the past
  self-attention cache, which returns the present one;
- ``MultiHeadAttention`` over the cross-attention cache, the source's padding as its key mask;
- ``Gelu`` for the feed-forward activation, and the model's own ``MatMulNBits``, ``LayerNormalization``
  and token and position tables everywhere else.
The first step's branch keeps its nodes, but its query, key and value products become one product on
the joined weights and a Split, so the file holds those weights once. The values computed are the same
up to float rounding (attention sums in another order: within 1e-5 on the fp32 test fixture; the greedy
tokens of 100 held-out prompts: README, Benchmark)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_merge import slim_cache_branch

PREFIX = "cache_"  # names of the with-past branch's nodes (onnx_merge)
FIRST_PREFIX = "first_"  # and of the first step's
FUSED_PREFIX = "fused_"  # the names of what this writes
JOINED_QKV = re.compile(rf"^{FIRST_PREFIX}{FUSED_PREFIX}l(\d+)_qkv$")  # the first step's joined q, k, v product


def _node(branch: onnx.GraphProto, name: str, prefix: str = PREFIX) -> onnx.NodeProto:
    found = [n for n in branch.node if n.name == prefix + name]
    if len(found) != 1:
        raise ValueError(f"the branch has no single node {prefix + name}")
    return found[0]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _bias(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> str:
    """The initializer input of a bias ``Add``."""
    names = [i for i in node.input if i in inits]
    if len(names) != 1:
        raise ValueError(f"{node.name}: not a bias Add")
    return names[0]


def _projection(branch: onnx.GraphProto, path: str, prefix: str = PREFIX) -> onnx.NodeProto:
    """The weight product of a linear layer: ``MatMulNBits`` in an int8 export, ``MatMul`` in an fp32 one."""
    for suffix in ("/MatMul_Q8", "/MatMul"):
        found = [n for n in branch.node if n.name == prefix + path + suffix]
        if found:
            return found[0]
    raise ValueError(f"the branch has no product {prefix + path}")


def _matmul(name: str, x: str, weight: onnx.NodeProto, out: str) -> onnx.NodeProto:
    """A product like ``weight`` (same weights, and the same codes, scales and attributes if quantized) on ``x``."""
    node = helper.make_node(weight.op_type, [x, *weight.input[1:]], [out], name=name, domain=weight.domain)
    node.attribute.extend(weight.attribute)
    return node


def _joined(parts: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto], x: str, name: str
            ) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """One product computing ``parts`` side by side (outputs concatenated along the last axis). An 8-bit
    ``MatMulNBits`` keeps each column's codes and scales, so every output is computed as before."""
    first = parts[0]
    if first.op_type == "MatMul":
        weight = np.concatenate([numpy_helper.to_array(inits[p.input[1]]) for p in parts], axis=1)
        return helper.make_node("MatMul", [x, name + "_w"], [name], name=name), [numpy_helper.from_array(weight, name + "_w")]
    for p in parts:
        if p.op_type != "MatMulNBits" or len(p.input) != 3 or _attrs(p) | {"N": 0} != _attrs(first) | {"N": 0}:
            raise ValueError(f"{p.name}: expected MatMulNBits like {first.name}, without zero points or bias")
    codes = np.concatenate([numpy_helper.to_array(inits[p.input[1]]) for p in parts])
    scales = np.concatenate([numpy_helper.to_array(inits[p.input[2]]) for p in parts])
    node = helper.make_node("MatMulNBits", [x, name + "_Q8", name + "_scales"], [name], name=name, domain=first.domain)
    node.attribute.extend(a for a in first.attribute if a.name != "N")
    node.attribute.append(helper.make_attribute("N", sum(_attrs(p)["N"] for p in parts)))
    return node, [numpy_helper.from_array(codes, name + "_Q8"), numpy_helper.from_array(scales, name + "_scales")]


def _share_qkv(first: onnx.GraphProto, layer: int, joined: onnx.NodeProto) -> None:
    """Make the first step's query, key and value products of ``layer`` one product with ``joined``'s weights
    and a Split writing their three outputs: the same values, and the model keeps one copy of the weights."""
    parts = [_projection(first, f"/decoder/layers.{layer}/self_attn/{m}_proj", FIRST_PREFIX) for m in "qkv"]
    x = parts[0].input[0]
    if any(p.input[0] != x for p in parts):
        raise ValueError(f"layer {layer}: the first step's q, k and v products read different inputs")
    at = min(list(first.node).index(p) for p in parts)
    name = FIRST_PREFIX + joined.name
    product = _matmul(name, x, joined, name)
    split = helper.make_node("Split", [name, "fused_qkv_sizes"], [p.output[0] for p in parts], name=name + "_split",
                             axis=-1)
    for p in parts:
        first.node.remove(p)
    first.node.insert(at, split)
    first.node.insert(at, product)


def _resolve_identities(branch: onnx.GraphProto) -> None:
    """Make every node read what an ``Identity`` chain copies (the merge shares weights that way)."""
    source = {x.output[0]: x.input[0] for x in branch.node if x.op_type == "Identity"}
    outputs = {o.name for o in branch.output}
    for x in branch.node:
        for k, name in enumerate(x.input):
            while name in source and name not in outputs:
                name = source[name]
            x.input[k] = name


def _layer_norm(name: str, x: str, original: onnx.NodeProto, out: str) -> onnx.NodeProto:
    node = helper.make_node("LayerNormalization", [x, *original.input[1:]], [out], name=name)
    node.attribute.extend(original.attribute)
    return node


def _embedding(branch: onnx.GraphProto, inits: dict[str, onnx.TensorProto]
               ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes from ``input_ids`` and the cache's length to the first layer's input ``fused_h0`` (the token
    table read by the export's own nodes: it may be stored in several ways), and the source mask as int32."""
    n = helper.make_node
    tokens = [x for x in branch.node if x.name.startswith(PREFIX + "/decoder/embed_tokens/")]
    positions = _node(branch, "/decoder/embed_positions/Gather").input[0]
    offset = next(int(numpy_helper.to_array(x.attribute[0].t)) for x in branch.node
                  if x.name == PREFIX + "/decoder/embed_positions/Constant_1")  # BART's learned positions start at 2
    width = int(numpy_helper.to_array(inits[_bias(_node(branch, "/decoder/layers.0/self_attn/q_proj/Add"), inits)]).size)
    constants = [numpy_helper.from_array(np.array([offset], np.int64), "fused_position_offset"),
                 numpy_helper.from_array(np.array([width] * 3, np.int64), "fused_qkv_sizes")]  # Split-13's sizes
    nodes = [*tokens,
             n("Shape", ["past_key_values.0.decoder.key"], ["fused_past_len"], name="fused_past_len", start=2, end=3),
             n("Add", ["fused_past_len", "fused_position_offset"], ["fused_position"], name="fused_position"),
             n("Gather", [positions, "fused_position"], ["fused_position_vec"], name="fused_position_vec"),
             n("Add", [tokens[-1].output[0], "fused_position_vec"], ["fused_embedded"], name="fused_embedded"),
             _layer_norm("fused_embed_ln", "fused_embedded",
                         _node(branch, "/decoder/layernorm_embedding/LayerNormalization"), "fused_h0"),
             n("Cast", ["encoder_attention_mask"], ["fused_source_mask"], name="fused_source_mask", to=TensorProto.INT32)]
    return nodes, constants


def _layer(branch: onnx.GraphProto, first: onnx.GraphProto, inits: dict[str, onnx.TensorProto], i: int, heads: int
           ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Layer ``i`` from ``fused_h{i}`` to ``fused_h{i+1}``, writing its present self-attention cache to the
    branch's outputs; the first step's q, k, v products come to share the joined weights."""
    n = helper.make_node
    ms = "com.microsoft"
    p, t, h = f"/decoder/layers.{i}/", f"fused_l{i}_", f"fused_h{i}"

    def bias(path: str) -> str:
        return _bias(_node(branch, f"{p}{path}/Add"), inits)

    qkv, weights = _joined([_projection(branch, f"{p}self_attn/{m}_proj") for m in "qkv"], inits, h, t + "qkv")
    qkv_bias = np.concatenate([numpy_helper.to_array(inits[bias(f"self_attn/{m}_proj")]) for m in "qkv"])
    _share_qkv(first, i, qkv)

    def linear(path: str, x: str, out: str) -> list[onnx.NodeProto]:
        return [_matmul(out + "_mm", x, _projection(branch, p + path), out + "_mm"),
                n("Add", [out + "_mm", bias(path)], [out], name=out)]

    def residual_norm(x: str, y: str, norm: str, out: str) -> list[onnx.NodeProto]:
        return [n("Add", [x, y], [out + "_res"], name=out + "_res"),
                _layer_norm(out, out + "_res", _node(branch, f"{p}{norm}/LayerNormalization"), out)]

    nodes = [qkv,
             n("Split", [t + "qkv", "fused_qkv_sizes"], [t + "q", t + "k", t + "v"], name=t + "split", axis=-1),
             n("MultiHeadAttention", [t + "q", t + "k", t + "v", t + "qkv_bias", "", "",
                                      f"past_key_values.{i}.decoder.key", f"past_key_values.{i}.decoder.value"],
               [t + "self", f"{PREFIX}out_present.{i}.decoder.key", f"{PREFIX}out_present.{i}.decoder.value"],
               name=t + "self", domain=ms, num_heads=heads),
             *linear("self_attn/out_proj", t + "self", t + "self_out"),
             *residual_norm(h, t + "self_out", "self_attn_layer_norm", t + "h1"),
             *linear("encoder_attn/q_proj", t + "h1", t + "cross_q"),
             n("MultiHeadAttention", [t + "cross_q", f"past_key_values.{i}.encoder.key",
                                      f"past_key_values.{i}.encoder.value", "", "fused_source_mask"],
               [t + "cross"], name=t + "cross", domain=ms, num_heads=heads),
             *linear("encoder_attn/out_proj", t + "cross", t + "cross_out"),
             *residual_norm(t + "h1", t + "cross_out", "encoder_attn_layer_norm", t + "h2"),
             *linear("fc1", t + "h2", t + "fc1"),
             n("Gelu", [t + "fc1"], [t + "gelu"], name=t + "gelu", domain=ms),
             *linear("fc2", t + "gelu", t + "fc2"),
             *residual_norm(t + "h2", t + "fc2", "final_layer_norm", f"fused_h{i + 1}")]
    return nodes, [*weights, numpy_helper.from_array(qkv_bias.astype(np.float32), t + "qkv_bias")]


def fuse_cache_branch(model: onnx.ModelProto, layers: int, heads: int) -> int:
    """Replace the with-past branch of a merged seq2seq decoder in place; returns its new node count (the
    count it has when fused already)."""
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    branch = next(a.g for a in if_node.attribute if a.name == "then_branch")
    first = next(a.g for a in if_node.attribute if a.name == "else_branch")
    if any(n.op_type == "MultiHeadAttention" for n in branch.node):
        return len(branch.node)
    if not any(n.op_type == "Erf" and "/activation_fn/" in n.name for n in branch.node):
        raise ValueError("only the exact (erf) GELU of BART's exports is rewritten")
    slim_cache_branch(model)  # the cross-attention outputs must be empty, not copies
    _resolve_identities(branch)
    constants = {x.output[0]: x.attribute[0].t for x in branch.node  # values the exporter wrote as nodes
                 if x.op_type == "Constant" and x.attribute and x.attribute[0].name == "value"}
    inits = {i.name: i for g in (model.graph, branch) for i in g.initializer} | constants
    nodes, extra = _embedding(branch, inits)
    for i in range(layers):
        layer_nodes, layer_weights = _layer(branch, first, inits, i, heads)
        nodes += layer_nodes
        extra += layer_weights
    nodes += [_matmul("fused_lm_head", f"fused_h{layers}", _projection(branch, "/lm_head"), "fused_lm_head"),
              helper.make_node("Add", ["fused_lm_head", _bias(_node(branch, "/Add"), inits)], [PREFIX + "out_logits"],
                               name="fused_logits")]
    producers = {o: x for x in branch.node for o in x.output}
    for out in [o.name for o in branch.output if ".encoder." in o.name]:  # the empty slices slim_cache_branch wrote
        empty = producers[out]
        nodes += [producers[c] for c in empty.input[1:] if c in producers] + [empty]
    produced = {o for x in nodes for o in x.output}
    needed = sorted({i for x in nodes for i in x.input if i in constants and i not in produced})
    del branch.node[:]
    branch.node.extend(nodes)
    branch.initializer.extend(inits[name] for name in needed)
    model.graph.initializer.extend(extra)
    used = {i for g in (model.graph, branch, first) for x in g.node for i in x.input}
    for graph in (model.graph, branch):
        keep = [x for x in graph.initializer if x.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return len(branch.node)


def fuse_dir(model_dir: Path, out: Path | None = None) -> tuple[int, int]:
    """Fuse the with-past branch of ``model_dir``'s merged decoder (in place, or into ``out``); returns the
    branch's node count before and after."""
    config = json.loads((model_dir / "config.json").read_text())
    model = onnx.load(str(model_dir / "decoder_model_merged.onnx"))
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    before = len(next(a.g for a in if_node.attribute if a.name == "then_branch").node)
    after = fuse_cache_branch(model, config["decoder_layers"], config["decoder_attention_heads"])
    onnx.save(model, str((out or model_dir / "decoder_model_merged.onnx")))
    return before, after


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="rapport-train fuse-decoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="an export folder with decoder_model_merged.onnx (rewritten in place)")
    args = p.parse_args(argv)
    before, after = fuse_dir(args.model_dir)
    print(f"with-past branch: {before} -> {after} nodes")


if __name__ == "__main__":
    main()
