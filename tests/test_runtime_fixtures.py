"""The ONNX runtime reproduces Hugging Face generate on two architectures and both Optimum layouts."""
import json

import pytest

from engine.model.generation import GenerationConfig
from engine.model.seq2seq import Seq2SeqModel

from .conftest import FIXTURES


@pytest.mark.parametrize("name", ["tiny-bart", "tiny-t5"])
def test_greedy_matches_hf_generate(name):
    folder = FIXTURES / name
    expected = json.loads((folder / "expected.json").read_text())
    model = Seq2SeqModel.from_dir(folder)
    config = GenerationConfig(max_new_tokens=expected["max_new_tokens"])
    for source, want in zip(expected["sources"], expected["greedy"]):
        assert list(model.generate(source, config)[0].ids) == want


@pytest.mark.parametrize("name", ["tiny-bart", "tiny-t5"])
def test_beam_matches_hf_generate(name):
    folder = FIXTURES / name
    expected = json.loads((folder / "expected.json").read_text())
    model = Seq2SeqModel.from_dir(folder)
    config = GenerationConfig("beam", num_beams=expected["num_beams"], max_new_tokens=expected["max_new_tokens"])
    same = sum(list(model.generate(s, config)[0].ids) == want
               for s, want in zip(expected["sources"], expected["beam"]))
    # Why 3 in 4: these random tiny models' beams tie. With onnxruntime's AVX-512 kernels both fixtures give
    # 20 of 20; with its AVX2 kernels (an emulated AVX2-only CPU, `qemu-x86_64 -cpu Haswell`) tiny-t5 gives
    # 16 of 20, although its encoder states and first logits differ from the AVX-512 run's by < 1e-6: two
    # hypotheses' scores that close swap places at an early step and the beams part there. Greedy (above)
    # is exact on both.
    assert same >= 0.75 * len(expected["sources"])


def test_layouts_detected():
    assert Seq2SeqModel.from_dir(FIXTURES / "tiny-bart").merged
    assert Seq2SeqModel.from_dir(FIXTURES / "tiny-lstm").merged  # the recurrent state is its cache
    assert not Seq2SeqModel.from_dir(FIXTURES / "tiny-t5").merged


def test_sampling_is_seeded_and_respects_limits():
    model = Seq2SeqModel.from_dir(FIXTURES / "tiny-bart")
    config = GenerationConfig("sample", num_candidates=3, max_new_tokens=5, top_k=10, top_p=0.9, seed=7)
    a, b = model.generate([5, 6, 7], config), model.generate([5, 6, 7], config)
    assert [c.ids for c in a] == [c.ids for c in b]
    assert len(a) == 3 and all(len(c.ids) <= 5 for c in a)


def test_no_repeat_ngram_blocks_repeats():
    model = Seq2SeqModel.from_dir(FIXTURES / "tiny-bart")
    ids = model.generate([4, 5, 6, 7], GenerationConfig(max_new_tokens=12, no_repeat_ngram_size=1))[0].ids
    body = [t for t in ids if t != model.eos_id]
    assert len(body) == len(set(body))


def test_time_budget_stops_early():
    model = Seq2SeqModel.from_dir(FIXTURES / "tiny-bart")
    ids = model.generate([4, 5, 6], GenerationConfig(max_new_tokens=200, time_budget_s=0.0))[0].ids
    assert len(ids) == 1


def test_teacher_forced_score_matches_step_by_step():
    model = Seq2SeqModel.from_dir(FIXTURES / "tiny-bart")
    source, target = [5, 6, 7, 8], [9, 10, 11, model.eos_id]
    batch = model.score([source, [4, 5]], [target, [9, model.eos_id]])
    import numpy as np
    from engine.model.generation import log_softmax
    ids = np.asarray([source])
    hidden = model.encode(ids, np.ones_like(ids))
    logits, past = model.first_step(np.asarray([[model.decoder_start_id]]), hidden, np.ones_like(ids))
    steps = []
    for tok in target:
        steps.append(log_softmax(logits)[0, tok])
        logits, past = model.next_step(np.asarray([[tok]]), hidden, np.ones_like(ids), past)
    assert np.allclose(batch[0], steps, atol=1e-4)
    assert batch[1, 2:].tolist() == [0, 0]
