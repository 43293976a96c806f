"""Issue 24's shortcuts keep the tokens: the slim cache branch of a merged decoder and its one-input Concats
removed, its with-past branch rebuilt from fused operators, finished rows leaving a batch, chunked encoding, the ranker's embedding cache; and the process
memory settings do what they say (tiny fp32 fixtures and the shipped MiniLM: exact or near-exact
comparisons)."""
import json
import os
import shutil
import sys

import numpy as np
import onnx
import pytest

import engine.model.seq2seq as seq2seq
from engine.config import DEFAULT_ENCODER
from engine.model.digest_cache import DigestCache
from engine.model.encoder import SentenceEncoder
from engine.model.generation import GenerationConfig
from engine.model.seq2seq import Seq2SeqModel
from engine.process_memory import release_free_memory, tune_malloc
from training.fused_decoder import fuse_cache_branch
from training.onnx_merge import drop_copying_concats, slim_cache_branch

from .conftest import FIXTURES


def sources() -> list[list[int]]:
    """The tiny-bart fixture's sources and their shorter cuts: rows of 2 to 19 tokens."""
    full = json.loads((FIXTURES / "tiny-bart" / "expected.json").read_text())["sources"]
    return full + [s[: 2 + k % 5] for k, s in enumerate(full)]


def greedy_reference(model: Seq2SeqModel, srcs: list[list[int]], steps: int) -> list[tuple[int, ...]]:
    """The decoding loop before issue 24: one padded encoder run, every row decoded until all finish."""
    ids, mask = model.pad(srcs)
    hidden = model.encode(ids, mask)
    logits, past = model.first_step(np.full((len(srcs), 1), model.decoder_start_id), hidden, mask)
    out: list[list[int]] = [[] for _ in srcs]
    done = np.zeros(len(srcs), dtype=bool)
    for _ in range(steps):
        chosen = logits.argmax(-1)
        for r in range(len(srcs)):
            if not done[r]:
                out[r].append(int(chosen[r]))
                done[r] = chosen[r] == model.eos_id
        if done.all():
            break
        logits, past = model.next_step(np.where(done, model.eos_id, chosen)[:, None], hidden, mask, past)
    return [tuple(o) for o in out]


def test_a_slim_cache_branch_decodes_the_same_tokens_without_copying_the_cache(tmp_path):
    slim_dir = tmp_path / "tiny-bart"
    shutil.copytree(FIXTURES / "tiny-bart", slim_dir)
    model_proto = onnx.load(str(slim_dir / "decoder_model_merged.onnx"))
    assert slim_cache_branch(model_proto) > 0 and slim_cache_branch(model_proto) == 0  # idempotent
    onnx.save(model_proto, str(slim_dir / "decoder_model_merged.onnx"))
    before, after = Seq2SeqModel.from_dir(FIXTURES / "tiny-bart"), Seq2SeqModel.from_dir(slim_dir)
    srcs = sources()
    for config in (GenerationConfig(max_new_tokens=12), GenerationConfig("beam", num_beams=3, max_new_tokens=12)):
        for a, b in zip(before.generate_batch(srcs, config), after.generate_batch(srcs, config)):
            assert [c.ids for c in a] == [c.ids for c in b]
            np.testing.assert_allclose([c.logprob for c in a], [c.logprob for c in b], atol=1e-5)
    ids = np.asarray([srcs[0]])
    hidden, mask = after.encode(ids, np.ones_like(ids)), np.ones_like(ids)
    _, past = after.first_step(np.asarray([[after.decoder_start_id]]), hidden, mask)
    outputs = after.decoder_with_past.run(None, after._feed(after.decoder_with_past, np.asarray([[5]]), hidden, mask,
                                                            past, True))
    names = [o.name for o in after.decoder_with_past.get_outputs()]
    cross = [out for name, out in zip(names, outputs) if ".encoder." in name]
    assert cross and all(out.shape[2] == 0 for out in cross)  # the cache of step 0 is kept, not copied


def test_one_input_concats_are_removed_without_changing_a_value(tmp_path):
    """The exporter's one-input Concats (a copy of each cross-attention cache entry at every step) go; the
    graph computes the same thing, so tokens and log-probs are exactly equal."""
    lean_dir = tmp_path / "tiny-bart"
    shutil.copytree(FIXTURES / "tiny-bart", lean_dir)
    model_proto = onnx.load(str(lean_dir / "decoder_model_merged.onnx"))
    slim_cache_branch(model_proto)
    assert drop_copying_concats(model_proto) > 0 and drop_copying_concats(model_proto) == 0
    branches = [a.g for n in model_proto.graph.node for a in n.attribute if a.g.node]
    assert not [n for g in branches for n in g.node if n.op_type == "Concat" and len(n.input) == 1
                and n.output[0] not in {o.name for o in g.output}]
    onnx.save(model_proto, str(lean_dir / "decoder_model_merged.onnx"))
    slim_dir = tmp_path / "slim"
    shutil.copytree(FIXTURES / "tiny-bart", slim_dir)
    slim = onnx.load(str(slim_dir / "decoder_model_merged.onnx"))
    slim_cache_branch(slim)
    onnx.save(slim, str(slim_dir / "decoder_model_merged.onnx"))
    before, after = Seq2SeqModel.from_dir(slim_dir), Seq2SeqModel.from_dir(lean_dir)
    srcs = sources()
    for config in (GenerationConfig(max_new_tokens=12), GenerationConfig("beam", num_beams=3, max_new_tokens=12)):
        for a, b in zip(before.generate_batch(srcs, config), after.generate_batch(srcs, config)):
            assert [c.ids for c in a] == [c.ids for c in b]
            np.testing.assert_allclose([c.logprob for c in a], [c.logprob for c in b], rtol=0, atol=1e-6)


def test_chunked_encoding_and_grouped_decoding_keep_each_rows_tokens(monkeypatch):
    """(The tiny fixtures' random weights write replies of one length: test_batching checks rows that finish
    at different steps on the shipped model.)"""
    model = Seq2SeqModel.from_dir(FIXTURES / "tiny-bart")
    srcs = sources()
    runs: list[int] = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda ids, mask: runs.append(ids.shape[0]) or encode(ids, mask))
    monkeypatch.setattr(seq2seq, "ENCODE_TOKENS", 40)  # several chunks of similar length
    config = GenerationConfig(max_new_tokens=14)
    together = [c[0] for c in model.generate_batch(srcs, config)]
    assert len(runs) > 2 and sum(runs) == len(srcs)
    assert [c.ids for c in together] == greedy_reference(model, srcs, 14)
    monkeypatch.setattr(seq2seq, "DECODE_TOKENS", 60)  # and decoded in groups of similar length
    steps = []
    first_step = model.first_step
    monkeypatch.setattr(model, "first_step", lambda *a: steps.append(a[0].shape[0]) or first_step(*a))
    grouped = [c[0] for c in model.generate_batch(srcs, config)]
    assert len(steps) > 2 and sum(steps) == len(srcs) and max(steps) < len(srcs)
    assert [c.ids for c in grouped] == [c.ids for c in together]
    beams = model.generate_batch(srcs, GenerationConfig("beam", num_beams=3, max_new_tokens=8))
    assert [b[0].ids for b in beams] == [model.generate(s, GenerationConfig("beam", num_beams=3, max_new_tokens=8))[0].ids
                                         for s in srcs]
    alone = [model.generate(s, config)[0] for s in srcs]
    assert [c.ids for c in together] == [c.ids for c in alone]
    np.testing.assert_allclose([c.logprob for c in together], [c.logprob for c in alone], atol=1e-4)


def test_the_embedding_cache_returns_each_texts_vector_and_holds_no_text():
    plain = SentenceEncoder.from_dir(DEFAULT_ENCODER)
    cached = SentenceEncoder.from_dir(DEFAULT_ENCODER, cache_size=3)
    texts = ["i love hiking with my dog", "what music do you like?", "i love hiking with my dog"]
    first = cached.embed(texts)
    np.testing.assert_array_equal(first[0], first[2])  # a repeated text is encoded once
    np.testing.assert_allclose(first[:2], plain.embed(texts[:2]), atol=1e-6)
    np.testing.assert_array_equal(cached.embed([texts[1]])[0], first[1])  # from the cache
    cached.embed(["one", "two", "three"])
    assert len(cached._cache) == 3
    assert all(isinstance(k, bytes) and len(k) == 16 for k in cached._cache._items)
    assert cached._cache.get(DigestCache.key(texts[0])) is None  # the oldest went first


@pytest.mark.parametrize("env", [{}, {"MALLOC_ARENA_MAX": "4"}, {"MALLOC_MMAP_THRESHOLD_": "65536"}])
def test_malloc_settings_apply_unless_the_environment_sets_them(monkeypatch, env):
    for key in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    applied = tune_malloc()
    linux = sys.platform.startswith("linux")
    assert applied == {key: linux and key not in env for key in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")}


def resident_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_free_heap_pages_go_back_to_the_system():
    blocks = [bytearray(b"\x01") * 100_000 for _ in range(600)]  # 60 MB of blocks small enough for the heap
    del blocks[:-1]  # the last one stays, so glibc cannot give the rest back from the heap's top by itself
    before = resident_mb()
    assert release_free_memory()
    assert before - resident_mb() > 30


def test_fused_cache_branch_computes_the_same_replies(tmp_path):
    """The with-past branch rebuilt from MultiHeadAttention, one QKV product and Gelu (and the first step's
    q, k, v products joined): on the fp32 fixture only the float summation order changes (within 1e-5), so
    greedy and beam tokens are equal and log-probs agree."""
    fused_dir = tmp_path / "fused"
    shutil.copytree(FIXTURES / "tiny-bart", fused_dir)
    proto = onnx.load(str(fused_dir / "decoder_model_merged.onnx"))
    config = json.loads((fused_dir / "config.json").read_text())
    nodes = fuse_cache_branch(proto, config["decoder_layers"], config["decoder_attention_heads"])
    branch = next(a.g for a in proto.graph.node[0].attribute if a.name == "then_branch")
    assert nodes == len(branch.node) < 150
    assert sum(n.op_type == "MultiHeadAttention" for n in branch.node) == 2 * config["decoder_layers"]
    assert fuse_cache_branch(proto, config["decoder_layers"], config["decoder_attention_heads"]) == nodes  # once
    onnx.save(proto, str(fused_dir / "decoder_model_merged.onnx"))
    before, after = Seq2SeqModel.from_dir(FIXTURES / "tiny-bart"), Seq2SeqModel.from_dir(fused_dir)
    srcs = sources()
    ids, mask = before.pad(srcs)
    hidden = before.encode(ids, mask)
    start = np.full((len(srcs), 1), before.decoder_start_id)
    logits, past = before.first_step(start, hidden, mask)
    got, got_past = after.first_step(start, hidden, mask)  # its q, k and v products joined
    np.testing.assert_allclose(got, logits, rtol=0, atol=1e-5)
    for name in past:
        np.testing.assert_allclose(got_past[name], past[name], rtol=0, atol=1e-5)
    for _ in range(5):  # the same cache in, the same logits and cache out
        tokens = logits.argmax(-1)[:, None]
        want, want_past = before.next_step(tokens, hidden, mask, past)
        got, got_past = after.next_step(tokens, hidden, mask, past)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        for name in want_past:
            np.testing.assert_allclose(got_past[name], want_past[name], rtol=0, atol=1e-5)
        logits, past = want, want_past
    for config in (GenerationConfig(max_new_tokens=12), GenerationConfig("beam", num_beams=3, max_new_tokens=12)):
        for a, b in zip(before.generate_batch(srcs, config), after.generate_batch(srcs, config)):
            assert [c.ids for c in a] == [c.ids for c in b]
            np.testing.assert_allclose([c.logprob for c in a], [c.logprob for c in b], rtol=0, atol=1e-4)


def test_a_large_groups_freed_activations_go_back_after_encoding_and_after_the_first_step(monkeypatch):
    """The encoder's and the first decoder step's freed activations are given back before the cache
    they would sit beside is used; a small group skips both releases."""
    model = Seq2SeqModel.from_dir(FIXTURES / "tiny-bart")
    events = []
    encode, first_step, next_step = model.encode_sources, model.first_step, model.next_step
    monkeypatch.setattr(model, "encode_sources", lambda srcs: events.append("encode") or encode(srcs))
    monkeypatch.setattr(model, "first_step", lambda *a: events.append("first step") or first_step(*a))
    monkeypatch.setattr(model, "next_step", lambda *a: events.append("next step") or next_step(*a))
    monkeypatch.setattr(seq2seq, "release_free_memory", lambda: events.append("release"))
    srcs = sources()
    config = GenerationConfig(max_new_tokens=4, min_new_tokens=4)
    monkeypatch.setattr(seq2seq, "RELEASE_TOKENS", 10_000)  # a small group: nothing to give back
    model.generate_batch(srcs, config)
    assert events[:2] == ["encode", "first step"] and set(events[2:]) == {"next step"}
    events.clear()
    monkeypatch.setattr(seq2seq, "RELEASE_TOKENS", 20)
    model.generate_batch(srcs, config)
    assert events[:4] == ["encode", "release", "first step", "release"] and set(events[4:]) == {"next step"}


def test_dropping_finished_rows_hands_over_the_old_cache_layer_by_layer():
    """_keep_rows empties the cache it is given (so the caller holds none of the old arrays once it returns,
    and each goes as soon as its copy exists) and returns the kept rows, cut to the widest kept source."""
    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    hidden = rng.standard_normal((3, 4, 8)).astype(np.float32)
    past = {f"past_key_values.{i}.{part}.{kv}": rng.standard_normal((3, 2, 4 if part == "encoder" else 5, 4))
            .astype(np.float32) for i in range(2) for part in ("encoder", "decoder") for kv in ("key", "value")}
    want = {name: value.copy() for name, value in past.items()}
    keep = np.array([1, 2])
    got_hidden, got_mask, got_past = seq2seq._keep_rows(keep, hidden, mask, past)
    assert past == {}
    np.testing.assert_array_equal(got_hidden, hidden[keep][:, :3])
    np.testing.assert_array_equal(got_mask, mask[keep][:, :3])
    assert set(got_past) == set(want)
    for name, value in got_past.items():
        expected = want[name][keep][:, :, :3] if ".encoder." in name else want[name][keep]
        np.testing.assert_array_equal(value, expected)
        assert value.flags.c_contiguous


def test_the_output_layer_is_stored_in_blocks_of_128():
    """reblock_output_layer requantizes only a vocabulary-wide product, once, and the product stays as close to
    fp32 as with blocks of 32 (8-bit weights and int8 activation blocks err ~1% of the output's largest
    magnitude on any CPU's kernel; the bound leaves 3x that)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from training.onnx_quantize import OUTPUT_MIN_COLUMNS, quantize_matmuls, reblock_output_layer

    rng = np.random.default_rng(0)
    k = 256
    wide = rng.standard_normal((k, OUTPUT_MIN_COLUMNS)).astype(np.float32) * 0.05
    narrow = rng.standard_normal((k, k)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "narrow"], ["h"]), helper.make_node("MatMul", ["h", "wide"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(wide, "wide"), numpy_helper.from_array(narrow, "narrow")])
    model = quantize_matmuls(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    x = rng.standard_normal((3, k)).astype(np.float32)
    want = (x @ narrow) @ wide

    def run() -> np.ndarray:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run()
    assert reblock_output_layer(model) == 1 and reblock_output_layer(model) == 0
    blocks = {n.input[1]: next(a.i for a in n.attribute if a.name == "block_size") for n in model.graph.node}
    assert sorted(blocks.values()) == [32, 128]  # the narrow product keeps its blocks of 32
    after = run()
    scale = np.abs(want).max()
    assert np.abs(before - want).max() < 0.03 * scale and np.abs(after - want).max() < 0.03 * scale
