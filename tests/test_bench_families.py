"""bench.families: every system is scored on the same examples and differences are paired."""
import numpy as np

from bench.families import EvalSet, markdown, summarize


def test_differences_are_paired_on_the_same_examples():
    s = EvalSet("persona_test", [[]] * 4, [[]] * 4, [[]] * 4, ["c"] * 4,
                ["i like jazz", "my dog", "hello there", "yes"], ["a", "a", "b", "c"])
    chitchat = EvalSet("chitchat_test", [[]] * 2, [[]] * 2, [[]] * 2, ["c"] * 2, ["ok", "no"], ["x", "y"])
    answers = {
        "transformer": {"persona_test": {"nll": np.array([1.0, 2.0, 3.0, 4.0]), "nll_word": np.array([2.0, 4, 6, 8]),
                                         "replies": ["i like jazz", "my cat", "hello", "no"]},
                        "chitchat_test": {"nll": np.array([1.0, 1.0]), "nll_word": np.array([1.0, 1.0]),
                                          "replies": ["ok", "no"]}},
        "lstm": {"persona_test": {"nll": np.array([1.5, 2.5, 3.5, 4.5]), "nll_word": np.array([3.0, 5, 7, 9]),
                                  "replies": ["i like", "x", "y", "z"]},
                 "chitchat_test": {"nll": np.array([2.0, 2.0]), "nll_word": np.array([2.0, 2.0]), "replies": ["no", "ok"]}},
        "retrieval": {"persona_test": {"replies": ["jazz", "my dog", "hello there", "yes"]},
                      "chitchat_test": {"replies": ["ok", "ok"]}},
    }
    table = summarize([s, chitchat], answers, "transformer")
    lstm = table["lstm"]["persona_test"]
    assert lstm["nll_minus_transformer"][0] == 0.5 and lstm["nll_minus_transformer"][1:] == [0.5, 0.5]
    assert lstm["nll_word_minus_transformer"] == [1.0, 1.0, 1.0]
    f1_t, f1_l = answers["transformer"]["persona_test"]["f1"], answers["lstm"]["persona_test"]["f1"]
    assert np.isclose(lstm["f1_minus_transformer"][0], (f1_l - f1_t).mean())
    assert table["transformer"]["persona_test"]["f1"][0] == f1_t.mean() > f1_l.mean()
    assert "nll_per_token" not in table["retrieval"]["persona_test"]  # retrieval has no likelihood
    assert table["retrieval"]["persona_test"]["f1_minus_transformer"][0] > 0
    result = {"first": "transformer", "quality": table, "generators": {}}
    text = markdown(result)
    assert "| lstm | 1.000 [1.000, 1.000]" in text and "| retrieval | - |" in text  # paired NLL per word
