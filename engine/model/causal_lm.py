"""Run a decoder-only chat model (the ``causal-lm`` family, ``training/causal_export.py``) with a KV cache.

One graph does both the prompt and the steps after it: ``decoder_model.onnx`` takes the new tokens,
the attention mask of everything so far, their positions, which new positions need logits, and the
cache (empty on the first call). Rows are left-padded, so every row's newest token is in the last
column; a row that has finished leaves the batch, and padding columns no live row reads are cut.
Prompts are run in groups of similar length (at most PREFILL_TOKENS padded tokens, which bounds the
cache a group holds).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .generation import GenerationConfig, process_logits, target_log_probs
from .onnx_session import onnx_session
from .search import Candidate, beam_search, greedy_or_sample
from .seq2seq import length_groups

PREFILL_TOKENS = 4096  # decoding rows x prompt tokens run together (the cache is ~46 KB a token for SmolLM2-135M)


class CausalLMModel:
    """A decoder-only ONNX session and the decoding loops (greedy, beam, sampling)."""

    family = "causal-lm"

    def __init__(self, folder: Path, threads: int = 2) -> None:
        self.folder = folder
        config = json.loads((folder / "config.json").read_text())
        self.eos_id = int(config["eos_token_id"])
        self.pad_id = int(config.get("pad_token_id", self.eos_id))
        self.layers, self.kv_heads = int(config["num_hidden_layers"]), int(config["num_key_value_heads"])
        self.head_dim = int(config["head_dim"])
        self.session = onnx_session(folder / "decoder_model.onnx", threads, spin=True)
        self._outputs = [o.name for o in self.session.get_outputs()]

    @classmethod
    def from_dir(cls, folder: str | Path, threads: int = 2) -> "CausalLMModel":
        """Load an export folder."""
        return cls(Path(folder), threads)

    def empty_cache(self, rows: int) -> dict[str, np.ndarray]:
        """The cache before the first call: every layer's keys and values with no positions."""
        shape = (rows, self.kv_heads, 0, self.head_dim)
        return {f"past_key_values.{i}.{kind}": np.zeros(shape, np.float32)
                for i in range(self.layers) for kind in ("key", "value")}

    def run(self, ids: np.ndarray, mask: np.ndarray, logit_index: np.ndarray,
            past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One call: ``ids`` (rows, new) after the cached positions; ``mask`` (rows, past + new).
        Returns logits (rows, k, vocab) at ``logit_index`` (rows, k) of the new positions, and the cache."""
        positions = np.maximum(mask.cumsum(1) - 1, 0)[:, -ids.shape[1]:]
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                "position_ids": positions.astype(np.int64), "logit_index": logit_index.astype(np.int64), **past}
        outputs = self.session.run(None, feed)
        return outputs[0], {name.replace("present", "past_key_values"): value
                            for name, value in zip(self._outputs[1:], outputs[1:])}

    def left_pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded ids and attention mask, (len(rows), longest row)."""
        width = max(1, max(len(r) for r in rows))
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
        return ids, mask

    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, "_Steps"]:
        """Run the prompts; returns each row's next-token logits (rows, vocab) and the state to decode from."""
        ids, mask = self.left_pad(prompts)
        logits, past = self.run(ids, mask, np.full((len(prompts), 1), ids.shape[1] - 1), self.empty_cache(len(prompts)))
        return logits[:, 0], _Steps(self, mask, past)

    def score(self, sources: list[list[int]], targets: list[list[int]]) -> np.ndarray:
        """Per-token log-probabilities of each target after its prompt, teacher-forced in one run.
        Returns (batch, max target length) with 0 where a target is shorter."""
        rows = [list(s) + list(t[:-1]) for s, t in zip(sources, targets)]
        ids, mask = self.left_pad(rows)
        longest = max(len(t) for t in targets)
        index = np.zeros((len(rows), longest), dtype=np.int64)
        tgt = np.zeros((len(rows), longest), dtype=np.int64)
        tgt_mask = np.zeros((len(rows), longest), dtype=np.float32)
        for i, (s, t) in enumerate(zip(sources, targets)):
            first = ids.shape[1] - len(rows[i]) + len(s) - 1  # the column that predicts t[0]
            index[i] = np.minimum(first + np.arange(longest), ids.shape[1] - 1)
            tgt[i, : len(t)], tgt_mask[i, : len(t)] = t, 1
        logits, _ = self.run(ids, mask, index, self.empty_cache(len(rows)))
        return target_log_probs(logits, tgt, tgt_mask)

    def generate(self, source_ids: list[int], config: GenerationConfig = GenerationConfig()) -> list[Candidate]:
        """Candidates for one prompt, best first (greedy: 1, beam: up to num_candidates, sample: num_candidates)."""
        return self.generate_batch([source_ids], config)[0]

    def generate_batch(self, sources: list[list[int]], config: GenerationConfig) -> list[list[Candidate]]:
        """:meth:`generate` for several prompts, decoded together in groups of similar length."""
        out: list[list[Candidate]] = [[] for _ in sources]
        process = lambda lg, seqs, step: process_logits(lg, seqs, config, step, self.eos_id)  # noqa: E731
        for group in length_groups(sources, PREFILL_TOKENS, config.rows_per_source):
            prompts = [sources[i] for i in group]
            if config.strategy == "beam":
                logits, steps = self.prefill(prompts)
                found = beam_search(logits, steps, config, process, self.eos_id)
            else:
                rows = 1 if config.strategy == "greedy" else config.num_candidates
                logits, steps = self.prefill([p for p in prompts for _ in range(rows)])
                flat = greedy_or_sample(logits, steps, config, process, self.eos_id)
                found = [sorted(flat[k * rows: (k + 1) * rows], key=lambda c: -c.mean_logprob)
                         for k in range(len(prompts))]
            for i, cands in zip(group, found):
                out[i] = cands
        return out


class _Steps:
    """A decoder-only batch between steps: each row's attention mask and cache."""

    def __init__(self, model: CausalLMModel, mask: np.ndarray, past: dict[str, np.ndarray]) -> None:
        self.model, self.mask, self.past = model, mask, past

    def advance(self, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Keep ``rows`` (dropping the padding columns none of them reads), feed ``tokens``, run one step."""
        if len(rows) != self.mask.shape[0] or (rows != np.arange(len(rows))).any():
            mask = self.mask[rows]
            cut = int(np.argmax(mask.any(0)))  # left padding no kept row reads
            self.mask = np.ascontiguousarray(mask[:, cut:])
            self.past = {k: np.ascontiguousarray(v[rows][:, :, cut:]) for k, v in self.past.items()}
        self.mask = np.concatenate([self.mask, np.ones((len(rows), 1), np.int64)], axis=1)
        logits, self.past = self.model.run(tokens[:, None], self.mask, np.zeros((len(rows), 1), np.int64), self.past)
        return logits[:, 0]
