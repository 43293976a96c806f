"""Merge decoder_model.onnx and decoder_with_past_model.onnx into decoder_model_merged.onnx.

The merged graph has Optimum's interface: all inputs of both plus ``use_cache_branch`` (bool[1]);
an If node runs the with-past branch when it is true (the encoder cache then passes through) and
the first-step branch otherwise. Weights that both decoders hold are stored once, which halves
the size of the decoder on disk.
"""
from __future__ import annotations

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
    onnx.save(model, str(out_path))
