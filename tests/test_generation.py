import numpy as np
import pytest

from engine.model.generation import (GenerationConfig, apply_no_repeat_ngram, apply_repetition_penalty,
                                     banned_ngram_tokens, chosen_log_probs, log_softmax, top_k_top_p_filter)
from engine.model.profile import recommender_score, update_profile


def test_repetition_penalty_like_hf():
    logits = np.array([[2.0, -2.0, 1.0]], dtype=np.float32)
    apply_repetition_penalty(logits, [[0, 1]], 2.0)
    assert logits.tolist() == [[1.0, -4.0, 1.0]]


def test_no_repeat_ngram():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert banned_ngram_tokens([1, 2], 3) == set()
    logits = np.zeros((1, 5), dtype=np.float32)
    apply_no_repeat_ngram(logits, [[1, 2, 3, 1, 2]], 3)
    assert np.isneginf(logits[0, 3]) and np.isfinite(logits[0, 4])


def test_top_k_top_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    assert np.isfinite(top_k_top_p_filter(logits, 2, 1.0)).tolist() == [[True, True, False, False]]
    assert np.isfinite(top_k_top_p_filter(logits, 0, 0.7)).tolist() == [[True, True, False, False]]
    assert np.isfinite(top_k_top_p_filter(logits, 0, 0.4)).tolist() == [[True, False, False, False]]


def test_config_validation():
    with pytest.raises(ValueError):
        GenerationConfig("nucleus")
    with pytest.raises(ValueError):
        GenerationConfig(temperature=0)


def test_recommender_formula():
    r = np.array([1.0, 0.0], dtype=np.float32)
    items = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    alpha = 0.5
    want = [2 / (2 + alpha), 0.0, 1 / (np.sqrt(2) + alpha)]
    assert np.allclose(recommender_score(r, items, alpha), want)
    assert recommender_score(None, items).tolist() == [0, 0, 0]


def test_profile_moving_average():
    v, n = update_profile(None, 0, np.array([1.0, 0.0]))
    v, n = update_profile(v, n, np.array([0.0, 1.0]))
    assert n == 2 and np.allclose(v, [0.5, 0.5])
    for _ in range(100):
        v, n = update_profile(v, n, np.array([0.0, 1.0]))
    assert v[1] > 0.99


def test_chosen_log_probs_are_the_log_softmax_entries_bit_for_bit():
    """The decoding loop's per-row score of the chosen token equals the full log-softmax's entry exactly
    (same operations in the same order), with a banned (-inf) token in a row and float32 kept."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 1000)) * 4).astype(np.float32)
    x[0, 5] = -np.inf
    chosen = rng.integers(0, 1000, 7)
    chosen[1] = x[1].argmax()
    got = chosen_log_probs(x, chosen)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, log_softmax(x)[np.arange(7), chosen])
