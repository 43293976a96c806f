"""Merge decoder_model.onnx and decoder_with_past_model.onnx into decoder_model_merged.onnx.

The merged graph has Optimum's interface: all inputs of both plus ``use_cache_branch`` (bool[1]);
an If node runs the with-past branch when it is true and the first-step branch otherwise. Weights that
both decoders hold are stored once, which halves the size of the decoder on disk.

The with-past branch returns its cross-attention cache outputs (``present.N.encoder.*``) empty (length 0
along the source axis) instead of copying the cache it was given: the caller keeps step 0's cross-attention
cache for the whole reply (:mod:`engine.model.seq2seq`), and the copies were a third of a decoder step's
time at 50 users. Every one-input ``Concat`` (a copy: the exporter writes one per cross-attention cache entry)
is removed too. ``rapport-train slim-decoder DIR`` applies both to a merged decoder exported before.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper


def _digest(init: onnx.TensorProto) -> str:
    arr = numpy_helper.to_array(init)
    return hashlib.sha1(arr.tobytes() + str(arr.shape).encode() + str(arr.dtype).encode()).hexdigest()


def _branch(graph: onnx.GraphProto, prefix: str, outer: set[str], renames: dict[str, str],
            outputs: list[str], extra_nodes: list[onnx.NodeProto]) -> onnx.GraphProto:
    """Copy ``graph``'s nodes as an If branch: local values get ``prefix``; outer names stay."""

    def name(n: str) -> str:
        if n == "" or n in outer:
            return n
        return renames.get(n, prefix + n)

    nodes = []
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + node.name
        del new.input[:]
        new.input.extend(name(i) for i in node.input)
        del new.output[:]
        new.output.extend(name(o) for o in node.output)
        nodes.append(new)
    nodes += extra_nodes
    produced = {o.name: name(o.name) for o in graph.output}
    out_infos = []
    final_nodes = []
    for out in outputs:
        src = produced.get(out, prefix + "passthrough_" + out)
        branch_out = prefix + "out_" + out
        final_nodes.append(helper.make_node("Identity", [src], [branch_out], name=prefix + "identity_" + out))
        out_infos.append(helper.make_tensor_value_info(branch_out, TensorProto.FLOAT, None))
    return helper.make_graph(nodes + final_nodes, prefix + "graph", [], out_infos)


def merge_decoders(decoder_path: Path, with_past_path: Path, out_path: Path) -> None:
    """Write the merged decoder; the two inputs are left in place."""
    first = onnx.load(str(decoder_path))
    later = onnx.load(str(with_past_path))
    shared: dict[str, str] = {}
    initializers: list[onnx.TensorProto] = []
    renames: list[dict[str, str]] = [{}, {}]
    for which, model in enumerate((first, later)):
        for init in model.graph.initializer:
            key = _digest(init)
            if key not in shared:
                shared[key] = f"w{len(shared)}_{init.name}"[:120]
                copy = onnx.TensorProto()
                copy.CopyFrom(init)
                copy.name = shared[key]
                initializers.append(copy)
            renames[which][init.name] = shared[key]
    inputs = {i.name: i for i in first.graph.input}
    inputs.update({i.name: i for i in later.graph.input})
    outer = set(inputs) | {"use_cache_branch"}
    outputs = [o.name for o in first.graph.output]
    passthrough = [
        helper.make_node("Identity", [o.replace("present", "past_key_values")], ["cache_passthrough_" + o],
                         name="cache_passthrough_" + o)
        for o in outputs if ".encoder." in o
    ]
    then_graph = _branch(later.graph, "cache_", outer, renames[1], outputs, passthrough)
    else_graph = _branch(first.graph, "first_", outer, renames[0], outputs, [])
    if_node = helper.make_node("If", ["use_cache_branch"], outputs, name="optimum::if",
                               then_branch=then_graph, else_branch=else_graph)
    use_cache = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    graph = helper.make_graph([if_node], "merged_decoder", [*inputs.values(), use_cache],
                              list(first.graph.output), initializer=initializers)
    model = helper.make_model(graph, opset_imports=first.opset_import, producer_name="rapport")
    model.ir_version = first.ir_version
    slim_cache_branch(model)
    drop_copying_concats(model)
    onnx.save(model, str(out_path))


def _empty_along_source(cache: str, output: str) -> list[onnx.NodeProto]:
    """Nodes giving ``cache`` cut to length 0 along its source axis (2): the shape still says which
    cache it is, and nothing is copied."""
    bounds = [(output + "_start", 0), (output + "_end", 0), (output + "_axes", 2)]
    constants = [helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], [v]))
                 for name, v in bounds]
    return [*constants, helper.make_node("Slice", [cache, *(n for n, _ in bounds)], [output], name=output + "_empty")]


def slim_cache_branch(model: onnx.ModelProto) -> int:
    """Make a merged decoder's with-past branch return empty cross-attention cache outputs instead of
    copies of its inputs (in place); returns how many outputs changed (0 when already slim)."""
    if_node = next((n for n in model.graph.node if n.op_type == "If"), None)
    if if_node is None:  # not a merged decoder with branches (the LSTM family's)
        return 0
    then = next(a.g for a in if_node.attribute if a.name == "then_branch")
    producer = {o: n for n in then.node for o in n.output}
    changed = 0
    for out in then.output:
        node = producer.get(out.name)
        if ".encoder." not in out.name or node is None or node.op_type != "Identity":
            continue
        source = node.input[0]
        while source in producer and producer[source].op_type == "Identity":  # back to the branch's input
            source = producer[source].input[0]
        if not source.startswith("past_key_values."):
            continue
        position = list(then.node).index(node)
        then.node.remove(node)
        for k, new in enumerate(_empty_along_source(source, out.name)):
            then.node.insert(position + k, new)
        changed += 1
    used = {i for n in then.node for i in n.input} | {o.name for o in then.output}
    for node in [n for n in then.node if n.op_type == "Identity" and n.output[0] not in used]:
        then.node.remove(node)  # the old passthrough copies
    return changed


def all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every subgraph inside it (an If's branches), outermost first."""
    out = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out += all_graphs(attr.g)
    return out


def drop_copying_concats(model: onnx.ModelProto) -> int:
    """Remove every one-input ``Concat`` (in place; subgraphs included) whose output is not a graph output:
    its readers read its input instead. The exporter writes one for each cross-attention cache entry of the
    with-past decoder, and onnxruntime copies the whole cache through it at every step (a third of a 50-row
    step with 190-token prompts). The values are unchanged; returns how many were removed."""
    removed = 0
    for graph in all_graphs(model.graph):
        outputs = {o.name for o in graph.output}
        for node in [n for n in graph.node if n.op_type == "Concat" and len(n.input) == 1 and n.output[0] not in outputs]:
            source, copy = node.input[0], node.output[0]
            graph.node.remove(node)
            for inner in all_graphs(graph):
                for reader in inner.node:
                    for k, name in enumerate(reader.input):
                        if name == copy:
                            reader.input[k] = source
            removed += 1
    return removed


def main(argv: list[str] | None = None) -> None:
    """``rapport-train slim-decoder DIR``: rewrite DIR/decoder_model_merged.onnx with a slim cache branch
    and without one-input Concats."""
    p = argparse.ArgumentParser(prog="rapport-train slim-decoder",
                                description=f"{slim_cache_branch.__doc__}\n\n{drop_copying_concats.__doc__}")
    p.add_argument("model_dir", type=Path)
    args = p.parse_args(argv)
    path = args.model_dir / "decoder_model_merged.onnx"
    model = onnx.load(str(path))
    slimmed, dropped = slim_cache_branch(model), drop_copying_concats(model)
    if slimmed or dropped:
        onnx.save(model, str(path))
    print(f"{path}: {slimmed} cross-attention cache outputs now empty, {dropped} one-input Concats removed")
