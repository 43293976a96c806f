"""The LSTM family (issue 23) runs through the same runtime and engine as the Transformer.

The exported LSTM's ONNX tokens are checked against PyTorch's on fresh random weights (torch is in the
`train` extra the suite installs) and against the tokens recorded with the ``tiny-lstm`` fixture; a tiny
LSTM with the real tokenizer (``tiny-lstm-chat``) talks through the whole engine in the fast tier."""
import json

import numpy as np
import pytest

from bots.fake import FakeAdapter
from engine.engine import Engine
from engine.model.generation import GenerationConfig
from engine.model.replier import Replier
from engine.model.seq2seq import Seq2SeqModel

from .conftest import FIXTURES


def test_the_recorded_greedy_tokens_of_the_lstm_fixture():
    expected = json.loads((FIXTURES / "tiny-lstm" / "expected.json").read_text())
    model = Seq2SeqModel.from_dir(FIXTURES / "tiny-lstm")
    config = GenerationConfig(max_new_tokens=expected["max_new_tokens"])
    for source, want in zip(expected["sources"], expected["greedy"]):
        assert list(model.generate(source, config)[0].ids) == want
    assert len({tuple(w) for w in expected["greedy"]}) > 10  # replies depend on the source


def test_a_batch_of_sources_decodes_as_each_alone():
    """The backward encoder reads each row within its own length: padding never changes a reply."""
    expected = json.loads((FIXTURES / "tiny-lstm" / "expected.json").read_text())
    model = Seq2SeqModel.from_dir(FIXTURES / "tiny-lstm")
    config = GenerationConfig(max_new_tokens=expected["max_new_tokens"])
    batch = model.generate_batch(expected["sources"], config)
    assert [list(c[0].ids) for c in batch] == expected["greedy"]
    beams = GenerationConfig("beam", num_beams=3, num_candidates=3, max_new_tokens=8)
    together = model.generate_batch(expected["sources"][:4], beams)
    alone = [model.generate(s, beams) for s in expected["sources"][:4]]
    assert [[c.ids for c in x] for x in together] == [[c.ids for c in x] for x in alone]


def test_onnx_matches_pytorch_greedy_and_scores(tmp_path):
    torch = pytest.importorskip("torch")
    from training.fixtures import tiny_lstm
    from training.lstm_export import export_lstm_onnx, pytorch_logprobs

    model = tiny_lstm(99, pad=1, start=2, eos=2, width=48)
    export_lstm_onnx(model, tmp_path)
    runtime = Seq2SeqModel.from_dir(tmp_path)
    rng = np.random.default_rng(5)
    sources = [[int(x) for x in rng.integers(3, 99, size=int(rng.integers(2, 30)))] for _ in range(8)]
    for source in sources:
        want = [t for t in model.generate(torch.tensor([source]), max_new_tokens=15)[0].tolist()[1:] if t != 1]
        assert list(runtime.generate(source, GenerationConfig(max_new_tokens=15))[0].ids) == want
    targets = [[5, 6, 7, 2], [8, 9, 2]]
    scores = runtime.score(sources[:2], targets)
    for row, (source, target) in enumerate(zip(sources[:2], targets)):
        np.testing.assert_allclose(scores[row, : len(target)], pytorch_logprobs(model, source, target), atol=1e-4)


def test_int8_quantization_keeps_the_layout(tmp_path):
    pytest.importorskip("torch")
    from training.fixtures import tiny_lstm
    from training.lstm_export import export_lstm_onnx, quantize_lstm

    export_lstm_onnx(tiny_lstm(99, pad=1, start=2, eos=2, width=32), tmp_path)
    quantize_lstm(tmp_path)
    runtime = Seq2SeqModel.from_dir(tmp_path)
    assert runtime.merged
    assert len(runtime.generate([5, 6, 7], GenerationConfig(max_new_tokens=6))[0].ids) >= 1


async def test_the_engine_talks_through_a_tiny_lstm(settings):
    replier = Replier.from_dirs(FIXTURES / "tiny-lstm-chat", None, threads=1)
    assert replier.mode == "greedy"
    async with Engine.from_settings(settings, replier=replier) as engine:
        bot = FakeAdapter(engine)
        first = await bot.send("ana", "hi! my name is Ana and I like jazz")
        assert first.kind == "reply" and first.text.strip()
        assert (await bot.send("ana", "what's my name?")).text == "Your name is Ana."
        assert (await bot.send("ana", "I want to kill myself")).kind == "safety"
        assert "haven't told me" in (await bot.send("bob", "what's my name?")).text


def test_the_shipped_lstm_decodes_as_pytorch_did():
    """The shipped LSTM against the PyTorch greedy tokens and log-probs recorded at export (held-out prompts).

    At export the fp32 graphs decoded every prompt exactly as PyTorch; int8 rounds weights and, per call,
    activations, and CPUs without VNNI round the same int8 products along another path. The export measured
    int8's error on this machine (``int8_mean_abs_logprob_diff``, about 0.013 nats); the bounds below allow
    a few times that, and three prompts whose greedy path turns at a near tie."""
    from engine.config import MODELS
    folder = MODELS / "rapport-chat-lstm"
    report = json.loads((folder / "export_report.json").read_text())
    assert json.loads((folder / "rapport_config.json").read_text())["model_type"] == "lstm"
    sources, greedy = report["sources"], report["pytorch_greedy"]
    assert report["fp32_greedy_equal"] == len(sources) == 16
    runtime = Seq2SeqModel.from_dir(folder)
    config = GenerationConfig(max_new_tokens=report["max_new_tokens"])
    got = [[t for t in runtime.generate(s, config)[0].ids if t != runtime.eos_id] for s in sources]
    assert sum(g == w for g, w in zip(got, greedy)) >= len(sources) - 3
    targets = [g + [runtime.eos_id] for g in greedy]
    scores = runtime.score(sources, targets)
    diffs = np.concatenate([np.abs(scores[i, : len(t)] - report["pytorch_logprobs"][i]) for i, t in enumerate(targets)])
    assert diffs.mean() < max(0.05, 4 * report["int8_mean_abs_logprob_diff"])
    assert len({tuple(g) for g in greedy}) > 4  # the replies depend on the prompt
