"""How reply candidates are decoded: the settings of each /style, the greedy setting, and the trimming
of a candidate cut at the token limit."""
from __future__ import annotations

import re

from .generation import GenerationConfig

STYLES: dict[str, list[GenerationConfig]] = {  # /style's choices, in the order its usage lists them
    "short": [GenerationConfig("beam", max_new_tokens=16, num_beams=4, num_candidates=4, no_repeat_ngram_size=3,
                               length_penalty=0.6)],
    "long": [GenerationConfig("beam", max_new_tokens=48, min_new_tokens=12, num_beams=4, num_candidates=4,
                              no_repeat_ngram_size=3, length_penalty=1.5),
             GenerationConfig("sample", max_new_tokens=48, min_new_tokens=12, num_candidates=4, top_p=0.9,
                              no_repeat_ngram_size=3, repetition_penalty=1.2)],
    "creative": [GenerationConfig("sample", max_new_tokens=40, num_candidates=8, top_p=0.95, temperature=1.0,
                                  no_repeat_ngram_size=3, repetition_penalty=1.2)],
    "precise": [GenerationConfig("beam", max_new_tokens=32, num_beams=5, num_candidates=5, no_repeat_ngram_size=3)],
    "balanced": [GenerationConfig("beam", max_new_tokens=32, num_beams=4, num_candidates=4, no_repeat_ngram_size=3),
                 GenerationConfig("sample", max_new_tokens=32, num_candidates=4, top_p=0.9, temperature=0.8,
                                  no_repeat_ngram_size=3, repetition_penalty=1.2)],
}
GREEDY = GenerationConfig("greedy", max_new_tokens=32, no_repeat_ngram_size=3)
REPLY_MODES = ("hybrid", "greedy")  # rank the whole pool, or send the greedy reply when it can be sent
DECODING = {**STYLES, "greedy": [GREEDY]}  # what the replier decodes per style ("greedy" is not a user style)


def complete_sentences(text: str) -> str:
    """``text`` up to its last complete sentence ("" when it has none): a reply cut at the token limit
    ("i don't know. i'm going to go to bed. i") must not end mid-sentence."""
    ends = [m.end() for m in re.finditer(r"[.!?]+(?=\s|$)", text)]
    return text[: ends[-1]].strip() if ends else ""
