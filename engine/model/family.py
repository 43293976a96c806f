"""Which kind of chat model a folder holds, read from its ``config.json``, and how to load it.

``"family": "causal-lm"`` is a decoder-only model (``causal_lm.py``, the ChatML layout of
``chat_prompt.py``); anything else is the Optimum seq2seq layout (``seq2seq.py``: the Transformer or the
LSTM, with the encoder layout of ``prompt.py``). Nothing else in the engine knows the difference: each
family comes as a model (``generate_batch``, ``score``, ``eos_id``), a codec (``encode``, ``decode``)
and a prompt layout (``build(codec, turns, persona, user_facts)``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .causal_lm import CausalLMModel
from .chat_prompt import ChatBudget
from .prompt import PromptBudget
from .seq2seq import Seq2SeqModel
from .text import ChatCodec, TextCodec

CAUSAL_LM = "causal-lm"


@dataclass(frozen=True)
class ChatModelParts:
    """A loaded chat model: runtime, tokenizer and prompt layout, and the folder's runtime settings."""

    model: Seq2SeqModel | CausalLMModel
    codec: TextCodec | ChatCodec
    layout: PromptBudget | ChatBudget
    runtime: dict


def family_of(folder: Path) -> str:
    """``causal-lm`` or ``seq2seq``."""
    config = json.loads((folder / "config.json").read_text())
    return CAUSAL_LM if config.get("family") == CAUSAL_LM else "seq2seq"


def load_prompt_parts(folder: Path) -> tuple[TextCodec | ChatCodec, PromptBudget | ChatBudget, dict]:
    """The tokenizer and prompt layout of ``folder``'s family, and its ``rapport_config.json`` (no model loaded)."""
    path = folder / "rapport_config.json"
    runtime = json.loads(path.read_text()) if path.exists() else {}
    budget = runtime.get("prompt_budget", {})
    if family_of(folder) == CAUSAL_LM:
        return ChatCodec.from_file(folder / "tokenizer.json"), ChatBudget(**budget), runtime
    return TextCodec.from_file(folder / "tokenizer.json"), PromptBudget(**budget), runtime


def load_chat_model(folder: Path, threads: int = 2) -> ChatModelParts:
    """Load the model of ``folder`` with its tokenizer, prompt layout and ``rapport_config.json``."""
    codec, layout, runtime = load_prompt_parts(folder)
    runner = CausalLMModel if family_of(folder) == CAUSAL_LM else Seq2SeqModel
    return ChatModelParts(runner.from_dir(folder, threads), codec, layout, runtime)
