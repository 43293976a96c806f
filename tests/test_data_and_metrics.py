"""Data splits never share a conversation; metrics match hand-computed values."""

import numpy as np
import pytest

from training.metrics import (bootstrap_ci, distinct_n, hits_at_1, normalize_answer, unigram_f1,
                              word_perplexity)

pytest.importorskip("chitchat_dataset")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from training.data import load_facts, load_splits, prepare
    out = tmp_path_factory.mktemp("data")
    sizes = prepare(out, seed=0)
    return sizes, load_splits(out), load_facts(out)


@pytest.mark.slow  # prepares the whole corpus
def test_splits_are_disjoint_by_conversation(prepared):
    sizes, splits, _ = prepared
    ids = [c.conv_id for convs in splits.values() for c in convs]
    assert len(ids) == len(set(ids))
    # training conversations are cut at unsafe turns ("<id>#<turn>"): every part stays in its conversation's split
    home = {}
    for name, convs in splits.items():
        for c in convs:
            assert home.setdefault(c.conv_id.split("#")[0], name) == name
    assert sizes["two_speaker_conversations"] - 50 <= len(home) <= sizes["two_speaker_conversations"]
    assert 0 < sizes["train_removed_unsafe"] + sizes["train_removed_personal"] < 0.01 * sizes["train_turns"]
    assert all(len(c.speakers) == 2 and c.speakers[0] != c.speakers[1] for cs in splits.values() for c in cs)
    assert sizes["train_conversations"] > 2500 and min(sizes[f"{k}_conversations"] for k in splits) >= 150


@pytest.mark.slow
def test_new_users_never_in_train_known_users_are(prepared):
    _, splits, facts = prepared
    train_speakers = {s for c in splits["train"] for s in c.speakers}
    new = {s for c in splits["new_user"] for s in c.speakers}
    assert any(s not in train_speakers for c in splits["new_user"] for s in c.speakers)
    held_out = new - train_speakers
    assert held_out and not any(s in held_out for c in splits["train"] for s in c.speakers)
    for c in splits["known_user"]:
        assert any(s in train_speakers for s in c.speakers)
    assert set(facts) <= train_speakers


@pytest.mark.slow
def test_turns_alternate_and_are_clean(prepared):
    from training.data import make_examples
    _, splits, _ = prepared
    conv = splits["train"][0]
    exs = make_examples(conv)
    assert len(exs) == len(conv.turns) - 1
    assert exs[0].speaker == conv.speakers[1] and exs[0].addressee == conv.speakers[0]
    assert all(t == " ".join(t.split()) and t for c in splits["valid"] for t in c.turns)


def test_f1_like_parlai():
    assert normalize_answer("The cat, a DOG!") == "cat dog"
    assert unigram_f1("the cat sat", "a cat sat down") == pytest.approx(2 * (1.0 * 2 / 3) / (1.0 + 2 / 3))
    assert unigram_f1("", "anything") == 0.0
    assert unigram_f1("yes yes", "yes") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_distinct_and_perplexity_and_hits():
    assert distinct_n(["a b a b", "a b"], 1) == pytest.approx(2 / 6)
    assert distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)
    assert word_perplexity(np.log(8) * 3, 3) == pytest.approx(8.0)
    scores = np.array([[3.0, 1.0, 2.0], [1.0, 3.0, 0.0], [2.0, 2.0, 0.0]])
    assert hits_at_1(scores).tolist() == [1.0, 0.0, 0.0]


def test_bootstrap_resamples_conversations():
    values = [1.0, 1.0, 0.0, 0.0]
    point, low, high = bootstrap_ci(values, ["a", "a", "b", "b"], n_boot=200)
    assert point == 0.5 and low == 0.0 and high == 1.0
    point, low, high = bootstrap_ci([2.0] * 6, list("abcabc"), n_boot=50)
    assert (point, low, high) == (2.0, 2.0, 2.0)


def test_a_conversation_is_cut_at_removed_turns():
    from training.data import Conversation
    from training.safe_data import cut_at_removed
    conv = Conversation("c", "", ["a", "b"], ["hi", "hello", "you idiot", "what?", "sorry", "ok", "bye"])
    parts = cut_at_removed(conv, [None, None, "unsafe", None, None, None, "personal"])
    assert [(p.conv_id, p.speakers, p.turns) for p in parts] == [
        ("c", ["a", "b"], ["hi", "hello"]), ("c#3", ["b", "a"], ["what?", "sorry", "ok"])]
