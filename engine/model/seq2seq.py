"""Run a seq2seq model exported in the Hugging Face Optimum ONNX layout, with a KV cache.

Layouts: ``decoder_model_merged.onnx`` (with ``use_cache_branch``) or ``decoder_model.onnx`` +
``decoder_with_past_model.onnx``. The encoder runs once; the cross-attention cache of step 0 is
kept for the whole reply and only the self-attention cache grows. A batch encodes in chunks of
similar length (less padding, a smaller peak of memory), and a row that has finished leaves the
batch (with the source padding no live row needs), so later steps decode only the rows still writing.
A recurrent decoder (the LSTM family,
``training/lstm_export.py``) uses the merged layout with its state as the cache: empty before step 0,
replaced at every step.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..process_memory import release_free_memory
from .onnx_session import onnx_session
from .generation import GenerationConfig, process_logits, target_log_probs
from .search import Candidate, beam_search, greedy_or_sample

__all__ = ["Candidate", "Seq2SeqModel", "length_groups"]


# decoding rows x source tokens decoded together: 50 users 10 turns into a conversation (190-token prompts)
# held 141 MB of cross-attention cache in one batch and copied it as rows finished (a peak of 800 MB);
# smaller groups read the weights once more per step each, a few ms of a 30-40 ms step (issue 24)
DECODE_TOKENS = 2048
ENCODE_TOKENS = 256  # padded source tokens encoded together (one 190-token prompt, or several short ones): the
# encoder holds 50-150 KB a token while it runs, and 256-token runs were as fast per token as 1,024-token ones;
# with 1,024 the encoder was the peak of bench.latency's 50 users with a history (404-424 MB, 344-387 with 256)
RELEASE_TOKENS = 512  # after encoding a group this large, and after its first decoder step, the freed activations
# go back to the system: the heap did not reuse them for the cache, and both counted at the peak (issue 24)


def length_groups(sources: list[list[int]], budget: int, rows_each: int = 1) -> list[list[int]]:
    """Indices of ``sources``, shortest first, cut into groups whose rows (``rows_each`` a source) x
    longest source stay within ``budget`` tokens (a longer source goes alone)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    groups: list[list[int]] = []
    while order:
        group = [order.pop(0)]
        while order and (len(group) + 1) * rows_each * max(1, len(sources[order[0]])) <= budget:
            group.append(order.pop(0))
        groups.append(group)
    return groups


def _keep_rows(keep: np.ndarray, hidden: np.ndarray, mask: np.ndarray,
               past: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The ``keep`` rows of a decoding batch, cut to the source positions any of them still reads
    (sources are right-padded; the cross-attention cache is cut the same way). ``past`` is emptied as its
    entries are copied, so the old cache goes one layer at a time rather than after the whole new one
    exists (the copies of a 10-prompt group's 34 MB cache doubled it at the peak)."""
    mask = mask[keep]
    width = max(1, int(mask.sum(1).max()))
    kept = {}
    for name in list(past):
        value = past.pop(name)[keep]
        kept[name] = np.ascontiguousarray(value[:, :, :width] if ".encoder." in name else value)
    return np.ascontiguousarray(hidden[keep][:, :width]), np.ascontiguousarray(mask[:, :width]), kept


def _pick(folder: Path, *names: str) -> Path | None:
    for name in names:
        if (folder / name).exists():
            return folder / name
    return None


class Seq2SeqModel:
    """Encoder + decoder ONNX sessions and the decoding loops (greedy, beam, sampling)."""

    def __init__(self, folder: Path, threads: int = 2) -> None:
        self.folder = folder
        config = json.loads((folder / "config.json").read_text())
        self.decoder_start_id = int(config["decoder_start_token_id"])
        eos = config["eos_token_id"]
        self.eos_id = int(eos[0] if isinstance(eos, list) else eos)
        self.pad_id = int(config.get("pad_token_id") or 0)
        encoder = _pick(folder, "encoder_model.onnx", "encoder_model_quantized.onnx")
        merged = _pick(folder, "decoder_model_merged.onnx", "decoder_model_merged_quantized.onnx")
        if encoder is None:
            raise FileNotFoundError(f"{folder} has no encoder_model.onnx: not an Optimum seq2seq export")
        self.encoder = onnx_session(encoder, threads)
        if merged is not None:
            self.decoder = self.decoder_with_past = onnx_session(merged, threads, spin=True)
        else:
            first = _pick(folder, "decoder_model.onnx", "decoder_model_quantized.onnx")
            past = _pick(folder, "decoder_with_past_model.onnx", "decoder_with_past_model_quantized.onnx")
            if first is None or past is None:
                raise FileNotFoundError(f"{folder} needs decoder_model_merged.onnx or decoder_model.onnx + "
                                        "decoder_with_past_model.onnx")
            self.decoder = onnx_session(first, threads)
            self.decoder_with_past = onnx_session(past, threads, spin=True)
        self.merged = merged is not None
        self._input_names = {id(sess): {i.name for i in sess.get_inputs()}
                             for sess in (self.decoder, self.decoder_with_past)}
        self._past_inputs = [i for i in self.decoder_with_past.get_inputs() if i.name.startswith("past_key_values")]
        self._present_names = [o.name for o in self.decoder.get_outputs() if o.name.startswith("present")]
        self._with_past_outputs = [o.name for o in self.decoder_with_past.get_outputs()]

    @classmethod
    def from_dir(cls, folder: str | Path, threads: int = 2) -> "Seq2SeqModel":
        """Load an export folder."""
        return cls(Path(folder), threads)

    # --- low-level steps -------------------------------------------------------------------------
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Encoder hidden states, (batch, src, d)."""
        return self.encoder.run(None, {"input_ids": input_ids.astype(np.int64),
                                       "attention_mask": attention_mask.astype(np.int64)})[0]

    def encode_sources(self, sources: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states and attention mask of right-padded ``sources``, (batch, longest, d) and
        (batch, longest). Sources are encoded shortest first in chunks of at most ENCODE_TOKENS padded
        tokens, each padded only to its own longest row; padded positions hold zeros (masked wherever
        they are read)."""
        ids, mask = self.pad(sources)
        hidden: np.ndarray | None = None
        for rows in length_groups(sources, ENCODE_TOKENS):
            width = max(1, len(sources[rows[-1]]))
            states = self.encode(ids[rows, :width], mask[rows, :width])
            if hidden is None:
                hidden = np.zeros((len(sources), ids.shape[1], states.shape[-1]), dtype=states.dtype)
            hidden[rows, :width] = states
        return hidden, mask

    def _feed(self, session, tokens, hidden, mask, past, use_cache: bool) -> dict:
        feed = {"input_ids": tokens.astype(np.int64), "encoder_attention_mask": mask.astype(np.int64)}
        if "encoder_hidden_states" in self._input_names[id(session)]:
            feed["encoder_hidden_states"] = hidden
        if self.merged:
            if "use_cache_branch" in self._input_names[id(session)]:  # a recurrent decoder needs no branch flag
                feed["use_cache_branch"] = np.array([use_cache])
            if not use_cache:
                for inp in self._past_inputs:
                    shape = [tokens.shape[0] if isinstance(d, str) and "batch" in d else
                             (d if isinstance(d, int) else 0) for d in inp.shape]
                    shape[0], shape[2] = tokens.shape[0], 0
                    feed[inp.name] = np.zeros(shape, dtype=np.float32)
        if use_cache:
            feed.update(past)
        return feed

    def first_step(self, tokens: np.ndarray, hidden: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict]:
        """Run step 0; returns last-position logits and the cache (self + cross attention). After a batch
        of at least RELEASE_TOKENS source tokens the step's freed activations go back to the system: they
        lay in the heap between the cache's arrays (a 10-prompt group held 76 MB after this step, 38 MB
        after the release, which takes ~3 ms)."""
        outputs = self.decoder.run(None, self._feed(self.decoder, tokens, hidden, mask, {}, False))
        if mask.size >= RELEASE_TOKENS:
            release_free_memory()
        past = {name.replace("present", "past_key_values"): value
                for name, value in zip(self._present_names, outputs[1:])}
        return outputs[0][:, -1, :], past

    def next_step(self, tokens: np.ndarray, hidden: np.ndarray, mask: np.ndarray,
                  past: dict) -> tuple[np.ndarray, dict]:
        """Run one step with the cache; only self-attention entries are replaced."""
        outputs = self.decoder_with_past.run(None, self._feed(self.decoder_with_past, tokens, hidden, mask, past, True))
        new_past = dict(past)
        for name, value in zip(self._with_past_outputs[1:], outputs[1:]):
            if ".decoder." in name:
                new_past[name.replace("present", "past_key_values")] = value
        return outputs[0][:, -1, :], new_past

    def pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids and attention mask, (len(rows), longest row)."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return ids, mask

    def score(self, sources: list[list[int]], targets: list[list[int]]) -> np.ndarray:
        """Per-token log-probabilities of each target given its source, teacher-forced in one batch.

        Returns (batch, max target length) with 0 where a target is shorter. Each distinct source
        is encoded once.
        """
        dec, _ = self.pad([[self.decoder_start_id, *t[:-1]] for t in targets])
        tgt, tgt_mask = self.pad(targets)
        distinct: dict[tuple[int, ...], int] = {}
        rows = [distinct.setdefault(tuple(s), len(distinct)) for s in sources]
        src, src_mask = self.pad([list(s) for s in distinct])
        hidden = self.encode(src, src_mask)[rows]
        logits = self.decoder.run(None, self._feed(self.decoder, dec, hidden, src_mask[rows], {}, False))[0]
        return target_log_probs(logits, tgt, tgt_mask)

    # --- decoding ---------------------------------------------------------------------------------
    def generate(self, source_ids: list[int], config: GenerationConfig = GenerationConfig()) -> list[Candidate]:
        """Candidates for one source, best first (greedy: 1, beam: up to num_candidates, sample: num_candidates)."""
        return self.generate_batch([source_ids], config)[0]

    def generate_batch(self, sources: list[list[int]], config: GenerationConfig) -> list[list[Candidate]]:
        """:meth:`generate` for several sources decoded together: one decoder run per step for every row
        of every source (the batch that makes concurrent users cheap), in groups of similar length of at
        most DECODE_TOKENS decoding rows x source tokens, which bounds the cross-attention cache."""
        out: list[list[Candidate]] = [[] for _ in sources]
        for group in length_groups(sources, DECODE_TOKENS, config.rows_per_source):
            for i, found in zip(group, self._generate_group([sources[i] for i in group], config)):
                out[i] = found
        return out

    def _generate_group(self, sources: list[list[int]], config: GenerationConfig) -> list[list[Candidate]]:
        """:meth:`generate_batch` for one group: its prompts encoded, then decoded together."""
        hidden, mask = self.encode_sources(sources)
        if mask.size >= RELEASE_TOKENS:
            release_free_memory()
        if config.strategy == "beam":
            return self._beam_search(hidden, mask, config)
        per = 1 if config.strategy == "greedy" else config.num_candidates
        rows = self._sample_or_greedy(np.repeat(hidden, per, 0), np.repeat(mask, per, 0), config)
        return [sorted(rows[i * per: (i + 1) * per], key=lambda c: -c.mean_logprob) for i in range(len(sources))]

    def _sample_or_greedy(self, hidden, mask, config: GenerationConfig) -> list[Candidate]:
        """One candidate per row of ``hidden``, in row order. A finished row leaves the batch."""
        rows = hidden.shape[0]
        logits, past = self.first_step(np.full((rows, 1), self.decoder_start_id), hidden, mask)
        return greedy_or_sample(logits, _Steps(self, hidden, mask, past, trim=True), config,
                                lambda lg, seqs, step: process_logits(lg, seqs, config, step, self.eos_id), self.eos_id,
                                (self.decoder_start_id,))

    def _beam_search(self, hidden, mask, config: GenerationConfig) -> list[list[Candidate]]:
        """Beam search for every source row of ``hidden`` at once; the live beams of all sources
        share each decoder run. Returns each source's finished candidates, best first."""
        logits, past = self.first_step(np.full((hidden.shape[0], 1), self.decoder_start_id), hidden, mask)
        return beam_search(logits, _Steps(self, hidden, mask, past, trim=False), config,
                           lambda lg, seqs, step: process_logits(lg, seqs, config, step, self.eos_id), self.eos_id,
                           (self.decoder_start_id,))


class _Steps:
    """A seq2seq batch between steps: encoder states, source mask and cache of each decoding row."""

    def __init__(self, model: Seq2SeqModel, hidden: np.ndarray, mask: np.ndarray, past: dict, trim: bool) -> None:
        self.model, self.hidden, self.mask, self.past, self.trim = model, hidden, mask, past, trim

    def advance(self, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Keep ``rows`` (cut to the source positions they still read when ``trim``), run one step."""
        if len(rows) != self.hidden.shape[0] or (rows != np.arange(len(rows))).any():
            if self.trim:
                self.hidden, self.mask, self.past = _keep_rows(rows, self.hidden, self.mask, self.past)
            else:
                self.hidden, self.mask = self.hidden[rows], self.mask[rows]
                self.past = {k: v[rows] for k, v in self.past.items()}
        logits, self.past = self.model.next_step(tokens[:, None], self.hidden, self.mask, self.past)
        return logits
