"""rapport-train static-int8: a merged decoder's MatMulNBits -> fixed-step u8 x 7-bit s8 products.

On the tiny fixture (quantized to 8-bit MatMulNBits and fused as the shipped model was): the integer sums
are exact on every CPU (7-bit weights: no int16 pair overflow), so a product equals its definition up to
float rounding, lies within the bound its two quantization steps give, and a row's logits do not depend on
the rest of the batch, bit for bit. No bound here comes from one machine's run."""
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.model.seq2seq import Seq2SeqModel
from training.fused_decoder import fuse_cache_branch
from training.onnx_quantize import quantize_matmuls
from training.row_quantize import WEIGHT_LEVELS, weight_nk
from training.static_quantize import (LEVELS, activation_ranges, branch_probe, products, record_decoder_feeds,
                                      static_int8, step_and_zero)

from .conftest import FIXTURES


def test_a_fixed_step_covers_the_calibrated_range_and_keeps_zero_exact():
    for low, high in ((-0.5, 2.0), (-3.0, 0.4), (0.2, 1.0)):
        step, zero = step_and_zero(low, high)
        assert 0 <= zero <= LEVELS and float(zero) == round(zero)
        codes = np.clip(np.round(np.array([min(low, 0.0), 0.0, high]) / step) + zero, 0, LEVELS)
        back = (codes - zero) * step
        assert back[1] == 0.0  # zero (padding, ReLU-like outputs) is exact
        assert abs(back[0] - min(low, 0.0)) <= step / 2 + 1e-9 and abs(back[2] - high) <= step / 2 + 1e-9


@pytest.fixture(scope="module")
def tiny_static(tmp_path_factory):
    """The tiny fixture as the shipped model's decoder is made: 8-bit MatMulNBits, fused with-past branch; then
    static-int8, calibrated on the fixture's own sources. Returns (8-bit folder, static folder, 8-bit decoder)."""
    root = tmp_path_factory.mktemp("static")
    nbits_dir, static_dir = root / "nbits", root / "static"
    shutil.copytree(FIXTURES / "tiny-bart", nbits_dir)
    config = json.loads((nbits_dir / "config.json").read_text())
    decoder = quantize_matmuls(onnx.load(str(nbits_dir / "decoder_model_merged.onnx")))
    fuse_cache_branch(decoder, config["decoder_layers"], config["decoder_attention_heads"])
    onnx.save(decoder, str(nbits_dir / "decoder_model_merged.onnx"))
    shutil.copytree(nbits_dir, static_dir)
    srcs = json.loads((FIXTURES / "tiny-bart" / "expected.json").read_text())["sources"]
    feeds = record_decoder_feeds(Seq2SeqModel.from_dir(nbits_dir), srcs, [s[1:] for s in srcs], steps=8, min_steps=8)
    assert feeds["else_branch"] and feeds["then_branch"]
    model = onnx.load(str(nbits_dir / "decoder_model_merged.onnx"))
    count = static_int8(model, activation_ranges(model, feeds))
    assert count == len(products(decoder)) > 0
    onnx.save(model, str(static_dir / "decoder_model_merged.onnx"))
    return nbits_dir, static_dir, decoder


def test_every_product_is_rewritten_and_each_weight_stored_once_in_seven_bits(tiny_static):
    _, static_dir, decoder = tiny_static
    model = onnx.load(str(static_dir / "decoder_model_merged.onnx"))
    assert not products(model)
    weights = {node.input[1] for _, node in products(decoder)}
    stored = [i for i in model.graph.initializer if i.name.endswith("_s7")]
    assert len(stored) == len(weights)  # the joined q, k, v and the output layer: once for both branches
    for init in stored:
        codes = onnx.numpy_helper.to_array(init)
        assert codes.dtype == np.int8 and np.abs(codes).max() <= WEIGHT_LEVELS
    assert 2 * LEVELS * WEIGHT_LEVELS <= 32767  # vpmaddubsw's int16 sum of two u8 x s8 products


def test_a_product_is_its_definition_and_within_its_quantization_steps(tiny_static):
    """Each product of the with-past branch against numpy on the same input: the definition (codes of the
    balanced input at the fixed step, times 7-bit codes and column scales) up to float rounding, and the
    float product x @ W within half a step of each operand, summed over K."""
    nbits_dir, static_dir, decoder = tiny_static
    model = onnx.load(str(static_dir / "decoder_model_merged.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    original = {i.name: i for i in decoder.graph.initializer}
    branch = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    producers = {o: n for n in branch.node for o in n.output}
    ints = [n for n in branch.node if n.op_type == "MatMulIntegerToFloat"]
    xs = [producers[producers[n.input[0]].input[0]].input[0] for n in ints]  # int <- QuantizeLinear <- Mul(x, balance)
    srcs = json.loads((FIXTURES / "tiny-bart" / "expected.json").read_text())["sources"]
    feed = record_decoder_feeds(Seq2SeqModel.from_dir(static_dir), srcs, [s[1:] for s in srcs], steps=4, min_steps=4)["then_branch"][-1]
    names = sorted(set(xs)) + [n.output[0] for n in ints]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(branch_probe(model, "then_branch", names).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    values = dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in {i.name for i in session.get_inputs()}})))
    nbits_nodes = {n.name: n for _, n in products(decoder)}
    for node, x_name in zip(ints, xs):
        mul = producers[producers[node.input[0]].input[0]]
        balance, step, zero = inits[mul.input[1]], float(inits[node.input[2]]), float(inits[node.input[4]])
        codes, scales = inits[node.input[1]].astype(np.float64), inits[node.input[3]].astype(np.float64)
        x = values[x_name].reshape(-1, balance.size).astype(np.float64)
        q = np.clip(np.round((x * balance).astype(np.float32) / np.float32(step)) + zero, 0, LEVELS)
        got = values[node.output[0]].reshape(len(x), -1)
        want = ((q - zero) @ codes) * (step * scales)[None, :]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        w = weight_nk(nbits_nodes[node.name.removesuffix("_int")], original).T.astype(np.float64)  # (K, N)
        w_balanced = w / balance[:, None]
        in_range = (np.abs((q - zero) * step - x * balance) <= step / 2 * 1.001).all(axis=1)  # rows not clipped
        bound = (step / 2 * np.abs(w_balanced).sum(0)[None, :] + scales[None, :] / 2 * np.abs(x * balance).sum(1)[:, None]
                 + step / 2 * scales[None, :] / 2 * balance.size)
        assert in_range.any()
        assert (np.abs(got - x @ w)[in_range] <= bound[in_range] * 1.001 + 1e-6).all()


def test_a_rows_logits_do_not_depend_on_the_rest_of_the_batch(tiny_static):
    """Fixed steps and exact integer sums: one row alone and in a batch gives the same floats, bit for bit."""
    _, static_dir, _ = tiny_static
    model = Seq2SeqModel.from_dir(static_dir)
    srcs = json.loads((FIXTURES / "tiny-bart" / "expected.json").read_text())["sources"]
    ids, mask = model.pad(srcs)
    hidden = model.encode(ids, mask)
    start = np.full((len(srcs), 1), model.decoder_start_id)
    batch_logits, batch_past = model.first_step(start, hidden, mask)
    tokens = batch_logits.argmax(-1)[:, None]
    batch_next, _ = model.next_step(tokens, hidden, mask, batch_past)
    for row in range(len(srcs)):  # (padded as in the batch: only the other rows differ)
        h, m = hidden[row:row + 1], mask[row:row + 1]
        logits, past = model.first_step(start[row:row + 1], h, m)
        np.testing.assert_array_equal(logits, batch_logits[row:row + 1])
        after, _ = model.next_step(tokens[row:row + 1], h, m, past)
        np.testing.assert_array_equal(after, batch_next[row:row + 1])


def test_dequantize_reads_the_static_layout_back_to_the_same_weights(tiny_static):
    """``rapport-train dequantize`` (continuing training from an export) on a static-int8 decoder: the same
    Linear weights as from the 8-bit decoder it came from, each within half a 7-bit step of its balanced
    column (scale / 2, divided back by the channel's balance)."""
    from training.dequantize import onnx_weights

    nbits_dir, static_dir, _ = tiny_static
    before = onnx_weights(nbits_dir / "decoder_model_merged.onnx")
    after = onnx_weights(static_dir / "decoder_model_merged.onnx")
    assert before.keys() == after.keys()
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(static_dir / "decoder_model_merged.onnx")).graph.initializer}
    largest_scale = max(v.max() for k, v in inits.items() if k.endswith("_s7_scales"))
    smallest_balance = min(1 / v.max() for k, v in inits.items() if k.endswith("_balance"))  # s = 1 / (1 / s)
    bound = largest_scale / 2 / smallest_balance * 1.001
    for name, weight in before.items():
        assert np.abs(after[name] - weight).max() <= bound, name
    assert bound < 0.1 * max(np.abs(w).max() for w in before.values())  # a wrong layer or transpose errs more
