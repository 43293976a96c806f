"""The decoder-only family (issue 27): one ONNX graph with a KV cache, the ChatML prompt layout, and the
same engine as the other families.

``tiny-llama`` is a random fp32 Llama with Hugging Face ``generate``'s tokens recorded; the export's own
forward pass is checked against ``transformers`` on fresh weights (torch is in the ``train`` extra the
suite installs); ``tiny-llama-chat`` (SmolLM2's tokenizer, int8) talks through the whole engine."""
import json

import numpy as np
import pytest

from bots.fake import FakeAdapter
from engine.engine import Engine
from engine.model.causal_lm import CausalLMModel
from engine.model.chat_prompt import ChatBudget, build_prompt_ids
from engine.model.family import family_of, load_chat_model
from engine.model.generation import GenerationConfig, log_softmax
from engine.model.prompt import Turn
from engine.model.replier import Replier
from engine.model.text import ChatCodec

from .conftest import FIXTURES


def _expected():
    return json.loads((FIXTURES / "tiny-llama" / "expected.json").read_text())


def test_greedy_matches_hf_generate():
    expected = _expected()
    model = CausalLMModel.from_dir(FIXTURES / "tiny-llama")
    config = GenerationConfig(max_new_tokens=expected["max_new_tokens"])
    for source, want in zip(expected["sources"], expected["greedy"]):
        assert list(model.generate(source, config)[0].ids) == want


def test_beam_matches_hf_generate():
    expected = _expected()
    model = CausalLMModel.from_dir(FIXTURES / "tiny-llama")
    config = GenerationConfig("beam", num_beams=expected["num_beams"], max_new_tokens=expected["max_new_tokens"])
    same = sum(list(model.generate(s, config)[0].ids) == want for s, want in zip(expected["sources"], expected["beam"]))
    assert same >= 0.9 * len(expected["sources"])


def test_a_batch_of_prompts_decodes_as_each_alone():
    """Left padding, rows leaving the batch and the padding cut after them change nothing (fp32)."""
    expected = _expected()
    model = CausalLMModel.from_dir(FIXTURES / "tiny-llama")
    config = GenerationConfig(max_new_tokens=expected["max_new_tokens"])
    batch = model.generate_batch(expected["sources"], config)
    assert [list(c[0].ids) for c in batch] == expected["greedy"]
    for got, source in zip(batch, expected["sources"]):
        alone = model.generate(source, config)[0]
        assert got[0].logprob == pytest.approx(alone.logprob, abs=1e-4)


def test_teacher_forced_score_matches_the_decoding_log_probs():
    model = CausalLMModel.from_dir(FIXTURES / "tiny-llama")
    sources = [[5, 6, 7, 8], [9, 10]]
    cands = [model.generate(s, GenerationConfig(max_new_tokens=6))[0] for s in sources]
    scores = model.score(sources, [list(c.ids) for c in cands])
    for row, cand in zip(scores, cands):
        assert row[: len(cand.ids)].sum() == pytest.approx(cand.logprob, abs=1e-4)
        assert (row[len(cand.ids):] == 0).all()
    # and step by step, by hand
    logits, steps = model.prefill([sources[0]])
    want = []
    for tok in cands[0].ids:
        want.append(log_softmax(logits)[0, tok])
        logits = steps.advance(np.arange(1), np.asarray([tok]))
    assert np.allclose(scores[0, : len(want)], want, atol=1e-4)


def test_sampling_is_seeded_and_respects_limits():
    model = CausalLMModel.from_dir(FIXTURES / "tiny-llama")
    config = GenerationConfig("sample", num_candidates=3, max_new_tokens=5, top_k=10, top_p=0.9, seed=7)
    a, b = model.generate([5, 6, 7], config), model.generate([5, 6, 7], config)
    assert [c.ids for c in a] == [c.ids for c in b]
    assert len(a) == 3 and all(len(c.ids) <= 5 for c in a)


def test_export_forward_matches_transformers():
    """The written-out forward pass (prefill of left-padded rows, then one cached step) against
    ``transformers`` on the same random weights."""
    pytest.importorskip("torch")
    from training.causal_export import parity
    from training.fixtures import tiny_llama

    assert parity(tiny_llama(99, 32, eos=2), [[5, 6, 7, 8, 9], [10, 11, 12], [13]]) < 1e-4


def test_the_folder_says_its_family():
    assert family_of(FIXTURES / "tiny-llama-chat") == "causal-lm"
    assert family_of(FIXTURES / "tiny-bart") == "seq2seq"
    parts = load_chat_model(FIXTURES / "tiny-llama-chat", threads=1)
    assert isinstance(parts.model, CausalLMModel) and isinstance(parts.layout, ChatBudget)


def test_the_prompt_keeps_the_newest_turns_that_fit():
    codec = ChatCodec.from_file(FIXTURES / "tiny-llama-chat" / "tokenizer.json")
    turns = [Turn(f"message number {i} " + "word " * 10, i % 2 == 0) for i in range(20)]
    ids = build_prompt_ids(codec.encode, turns, ["i love jazz"], ["my name is ana"], ChatBudget(max_source_tokens=120))
    text = codec.tokenizer.decode(ids, skip_special_tokens=False)
    assert len(ids) <= 120
    assert "About you: i love jazz." in text and "About them: my name is ana." in text
    assert text.endswith("<|im_start|>assistant\n")
    assert "message number 19" in text and "message number 0 " not in text
    kept = [i for i in range(20) if f"message number {i} " in text]
    assert kept == list(range(kept[0], 20))  # a suffix of the history, in order


def test_training_windows_are_the_runtime_prompt_plus_the_reply():
    """What the model is trained on and what it is asked at run time are the same tokens: the prompt for
    the bot's k-th turn is the training window up to that turn's header, and the loss covers only the
    bot's words and its end token."""
    pytest.importorskip("torch")
    from training.lm_finetune import ChatEncoder

    tokenizer = FIXTURES / "tiny-llama-chat" / "tokenizer.json"
    budget = ChatBudget(max_source_tokens=10_000)
    enc = ChatEncoder(tokenizer, budget, max_tokens=10_000)
    turns = [Turn("hi, I'm Ana!", True), Turn("Hello Ana, nice to meet you.", False),
             Turn("Do you like jazz?", True), Turn("I love it, Miles Davis most of all.", False)]
    [window] = enc.windows(["i play the trumpet"], ["my name is ana"], turns)
    prompt = build_prompt_ids(enc.encode, turns[:3], ["i play the trumpet"], ["my name is ana"], budget)
    assert window.ids[: len(prompt)] == prompt
    trained = enc.tokenizer.decode([i for i, t in zip(window.ids, window.target) if t], skip_special_tokens=False)
    assert trained == "Hello Ana, nice to meet you.<|im_end|>I love it, Miles Davis most of all.<|im_end|>"


def test_long_conversations_are_cut_between_turns():
    pytest.importorskip("torch")
    from training.lm_finetune import ChatEncoder

    enc = ChatEncoder(FIXTURES / "tiny-llama-chat" / "tokenizer.json", ChatBudget(), max_tokens=120)
    turns = [Turn(f"turn {i}: " + "words and more words " * 3, i % 2 == 0) for i in range(16)]
    windows = enc.windows([], [], turns)
    assert len(windows) > 1 and all(len(w.ids) <= 120 for w in windows)
    trained = "".join(enc.tokenizer.decode([i for i, t in zip(w.ids, w.target) if t]) for w in windows)
    assert [f"turn {i}:" in trained for i in range(16)] == [i % 2 == 1 for i in range(16)]  # each bot turn once


async def test_the_engine_talks_through_a_tiny_llama(settings):
    replier = Replier.from_dirs(FIXTURES / "tiny-llama-chat", None, threads=1)
    assert replier.mode == "greedy"
    async with Engine.from_settings(settings, replier=replier) as engine:
        bot = FakeAdapter(engine)
        first = await bot.send("ana", "hi! my name is Ana and I like jazz")
        assert first.kind == "reply" and first.text.strip()
        assert (await bot.send("ana", "what's my name?")).text == "Your name is Ana."
        assert (await bot.send("ana", "I want to kill myself")).kind == "safety"
        assert "haven't told me" in (await bot.send("bob", "what's my name?")).text


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_dequantize_rebuilds_the_exported_llama(tmp_path, bits):
    """``rapport-train dequantize`` on a decoder-only export gives back the Llama it came from: exactly from
    the fp32 graph, within the rounding of the stored weights from an 8- or 4-bit one."""
    torch = pytest.importorskip("torch")
    from training.causal_export import export_fp32, quantize, write_config
    from training.dequantize import rebuild_causal
    from training.fixtures import tiny_llama

    model = tiny_llama(99, 64, eos=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))  # norms that differ from layer to layer
    export_fp32(model, tmp_path / "fp32.onnx")
    if bits:
        quantize(tmp_path / "fp32.onnx", tmp_path / "decoder_model.onnx", bits)
    else:
        (tmp_path / "fp32.onnx").rename(tmp_path / "decoder_model.onnx")
    write_config(model, tmp_path, FIXTURES / "tiny-llama-chat" / "tokenizer.json", {})
    back = rebuild_causal(tmp_path)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        want, got = model(ids).logits, back(ids).logits
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        step = a.abs().max() / (127 if bits == 8 else 7) if bits and a.ndim == 2 else 0
        assert (a - b).abs().max() <= step + 1e-6, name  # within one quantization step of each block's scale
    assert torch.allclose(want, got, atol=1e-5) if not bits else (want - got).abs().max() < 0.25 * want.abs().max()


def test_a_large_graph_keeps_its_weights_in_parts(tmp_path, monkeypatch):
    """Weights files stay under the part size (git hosts refuse files over 100 MB) and onnxruntime reads
    them: the same logits as the graph in one file."""
    pytest.importorskip("torch")
    from training import causal_export
    from training.fixtures import tiny_llama

    model = tiny_llama(99, 64, eos=2)
    causal_export.export_fp32(model, tmp_path / "fp32.onnx")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for folder in (whole, parts):
        folder.mkdir()
        causal_export.write_config(model, folder, FIXTURES / "tiny-llama-chat" / "tokenizer.json", {})
    causal_export.quantize(tmp_path / "fp32.onnx", whole / "decoder_model.onnx", 8)
    import onnx
    largest = max(len(t.raw_data) for t in onnx.load(str(whole / "decoder_model.onnx")).graph.initializer)
    monkeypatch.setattr(causal_export, "PART_BYTES", largest + 1000)  # a part holds at least its largest tensor
    causal_export.quantize(tmp_path / "fp32.onnx", parts / "decoder_model.onnx", 8)
    pieces = sorted(parts.glob("decoder_model.onnx.weights.*"))
    assert len(pieces) > 1 and all(p.stat().st_size <= largest + 1000 for p in pieces)
    prompts = [[5, 6, 7, 8], [9, 10]]
    a, b = CausalLMModel.from_dir(whole), CausalLMModel.from_dir(parts)
    assert np.array_equal(a.prefill(prompts)[0], b.prefill(prompts)[0])
