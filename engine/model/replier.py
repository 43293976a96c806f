"""Generate reply candidates and pick one: ranker similarity + generator score + λ·P(u, c),
less two terms against bland replies (MMI and hubness, see :class:`RankWeights`).

The weights come from the chat model's ``rapport_config.json`` (``rank_weights``, chosen on the
validation splits by ``rapport-train reply-choice``); ``/style`` scales them (STYLE_WEIGHTS).
In ``greedy`` mode (``reply_mode`` in ``rapport_config.json``, or RAPPORT_REPLY_MODE) a user on the
default style who never reacted to a reply gets the model's greedy reply, and the full candidate pool
only when that reply cannot be sent (filtered, a repeat, or a claim of the user's facts as the bot's
own); a user with reactions gets the pool ranked with their taste.
This is synchronous, CPU-bound code: the engine runs it in a worker thread. :meth:`Replier.reply_batch`
answers many users at once (one encoder call, one decoder run per step for all of them); under
load each user gets fewer decoding rows (``max_rows``) so a batch stays within a latency budget.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable
from pathlib import Path

import numpy as np

from ..metrics import CANDIDATES, DECODE_ROWS
from .encoder import SentenceEncoder
from .decoding import DECODING, REPLY_MODES, STYLES, complete_sentences
from .generation import GenerationConfig
from .profile import recommender_score
from .retrieval import ReplyIndex
from .taste import Taste
from .causal_lm import CausalLMModel
from .chat_prompt import ChatBudget
from .family import load_chat_model
from .prompt import PromptBudget, Turn
from .seq2seq import Seq2SeqModel
from .text import ChatCodec, TextCodec

_WORD = re.compile(r"\w+")
TEMPLATE_SLOT = re.compile(r"\[[^\[\]]{1,40}\]")  # of the persona data ("i'm [name].", "[user 2's name]"): never sent
LOST_FOR_WORDS = "Sorry, I'm lost for words. Could you say that another way?"
SAFE_FALLBACK = "Hmm, I'm not sure what to say to that. Tell me more, or let's talk about something else?"
NEAR_COPY = 0.9  # cosine above which a candidate repeats a recent turn
EMBEDDING_CACHE = 4096  # texts whose vectors the ranker keeps (6 MB): recent turns are embedded once
CLAIM_PENALTY = 10.0  # more than any spread of the other score parts: a claim is sent only when all candidates make one


@dataclass(frozen=True)
class RankWeights:
    """Weights of the candidate score. ``mmi`` weighs the candidate's prior log-probability (the
    decoder's with an empty prompt) against it: maximum mutual information, Li et al. 2016.
    ``hubness`` weighs its mean cosine to a fixed sample of contexts against it: a reply close to
    every context is close to none in particular."""

    ranker: float = 1.0
    generator: float = 0.1
    profile: float = 0.5
    mmi: float = 0.0
    hubness: float = 0.0

    def score(self, f: "CandidateFeatures") -> np.ndarray:
        """Score of every candidate; a repeat of a recent turn loses 1, a claim CLAIM_PENALTY."""
        return (self.ranker * f.ranker + self.generator * f.generator + self.profile * f.profile
                - self.mmi * f.prior - self.hubness * f.hub - f.echo)


# How /style moves the weights: "precise" trusts the generator more, "creative" the ranker.
STYLE_WEIGHTS: dict[str, dict[str, float]] = {"precise": {"generator": 2.0}, "creative": {"generator": 0.5}}


@dataclass(frozen=True)
class CandidateFeatures:
    """Score parts of each candidate: ranker cosine to the context, generator mean log-prob,
    P(u, c) with the user's profile vector, 1 where it repeats a recent turn, the prior mean
    log-prob (empty prompt; 0 when not computed) and the hubness (0 without a context sample)."""

    texts: list[str]
    ranker: np.ndarray
    generator: np.ndarray
    profile: np.ndarray
    echo: np.ndarray
    prior: np.ndarray
    hub: np.ndarray


@dataclass(frozen=True)
class ReplyRequest:
    """What :meth:`Replier.reply_batch` needs for one user. ``message`` is embedded for the profile
    update; ``needs_reply`` is False when the engine already has the answer (from memory); ``keep`` is the
    output filter (True for each candidate text that may be sent), applied before ranking; ``claims`` marks
    (1.0) each candidate that claims the user's facts (or a name not the bot's) as the bot's own, which then
    ranks below every candidate that does not;
    ``taste`` (see :mod:`engine.model.taste`) joins P(u, c) and raises its weight."""

    turns: list[Turn]
    persona: list[str]
    user_facts: list[str]
    profile: np.ndarray | None
    style: str = "balanced"
    needs_reply: bool = True
    keep: Callable[[list[str]], list[bool]] | None = None
    claims: Callable[[list[str]], np.ndarray] | None = None
    taste: Taste | None = None  # from the user's reactions; with one, the reply is chosen from the full pool

    @property
    def message(self) -> str:
        return self.turns[-1].text if self.turns else ""


@dataclass(frozen=True)
class ScoredReply:
    """A candidate reply with its score parts."""

    text: str
    score: float
    ranker: float
    generator: float
    profile: float
    penalized: bool = False  # a repeat of a recent turn, or a claim of the user's facts


class Replier:
    """Turns (history, profile) into a reply with the seq2seq model and the sentence encoder."""

    def __init__(self, model: Seq2SeqModel | CausalLMModel, codec: TextCodec | ChatCodec,
                 encoder: SentenceEncoder | None, budget: PromptBudget | ChatBudget = PromptBudget(), weights: RankWeights = RankWeights(),
                 time_budget_s: float = 5.0, index: ReplyIndex | None = None, retrieve_k: int = 8,
                 max_rows: int = 32, mode: str = "hybrid", filter_threads: int = 2) -> None:
        if index is not None and encoder is None:
            raise ValueError("a reply index needs the sentence encoder that built it")
        if mode not in REPLY_MODES:
            raise ValueError(f"unknown reply mode {mode!r}: use {' or '.join(REPLY_MODES)}")
        self.mode = mode
        self.model = model
        self.codec = codec
        self.encoder = encoder
        self.budget = budget
        self.weights = weights
        self.time_budget_s = time_budget_s
        self.index = index
        self.retrieve_k = retrieve_k
        self.max_rows = max_rows
        self.filter_threads = filter_threads
        self._filters: ThreadPoolExecutor | None = None  # runs the output filters of a batch side by side
        self._warm = False

    @classmethod
    def from_dirs(cls, model_dir: Path, encoder_dir: Path | None, threads: int = 2,
                  index_dir: Path | None = None, profile_weight: float | None = None, mode: str | None = None,
                  **kwargs) -> "Replier":
        """Load the chat model export of either family (prompt layout, ranking weights, reply mode), the sentence encoder and
        the reply index; ``profile_weight`` overrides the exported λ, ``mode`` the exported reply mode."""
        parts = load_chat_model(model_dir, threads)
        weights = RankWeights(**parts.runtime.get("rank_weights", {}))
        mode = mode or parts.runtime.get("reply_mode")
        if profile_weight is not None:
            weights = replace(weights, profile=profile_weight)
        encoder = SentenceEncoder.from_dir(encoder_dir, threads, cache_size=EMBEDDING_CACHE) \
            if encoder_dir and encoder_dir.exists() else None
        index = None
        if encoder is not None and index_dir is not None and index_dir.exists():
            index = ReplyIndex.load(index_dir, encoder.folder / "model.onnx")
        return cls(parts.model, parts.codec, encoder, parts.layout, weights, index=index, mode=mode or "hybrid",
                   filter_threads=threads, **kwargs)

    def warm_up(self) -> None:
        """Answer one made-up message, once per replier: the first run of each ONNX session costs
        about a second (buffers are allocated, kernels chosen), which would otherwise fall on a user."""
        if not self._warm:
            self.reply_batch([ReplyRequest([Turn("hi! how are you today?", True)], [], [], None)])
            self._warm = True

    def source_ids(self, turns: list[Turn], persona: list[str], user_facts: list[str]) -> list[int]:
        """Model input for this conversation."""
        return self.budget.build(self.codec, turns, persona, user_facts)

    def candidates(self, source: list[int], style: str) -> list[tuple[str, float]]:
        """Distinct non-empty (text, mean log-prob) candidates of every decoding setting of ``style``; a
        candidate cut at the token limit is trimmed to its last complete sentence or dropped, and one with
        a template slot of the training data ("[name]") is dropped."""
        return self.candidates_batch([source], [style])[0]

    def candidates_batch(self, sources: list[list[int]], styles: list[str]) -> list[list[tuple[str, float]]]:
        """:meth:`candidates` for several sources; sources with the same style decode together, and
        when there are more than ``max_rows`` rows per setting each source gets fewer candidates."""
        found: list[dict[str, float]] = [{} for _ in sources]
        for style in sorted(set(styles)):
            members = [i for i, s in enumerate(styles) if s == style]
            for config in DECODING.get(style, STYLES["balanced"]):
                config = self.shrink(config, len(members)).with_(time_budget_s=self.time_budget_s / 2)
                DECODE_ROWS.observe(len(members) * (config.num_beams if config.strategy == "beam"
                                                    else config.num_candidates))
                for i, cands in zip(members, self.model.generate_batch([sources[i] for i in members], config)):
                    for cand in cands:
                        text = self.text_of(cand.ids)
                        if text and _WORD.search(text) and not TEMPLATE_SLOT.search(text) and text not in found[i]:
                            found[i][text] = cand.mean_logprob
        return [list(f.items()) for f in found]

    def text_of(self, ids: Sequence[int]) -> str:
        """A decoded candidate; one cut at the token limit (no end token) trimmed to its last complete sentence."""
        text = self.codec.decode(list(ids))
        return text if ids and ids[-1] == self.model.eos_id else complete_sentences(text)

    def shrink(self, config: GenerationConfig, sources: int) -> GenerationConfig:
        """``config`` with at most ``max_rows // sources`` (at least 1) decoding rows per source."""
        rows = max(1, self.max_rows // max(1, sources))
        if config.strategy == "beam":
            beams = min(config.num_beams, rows)
            return config.with_(num_beams=beams, num_candidates=min(config.num_candidates, beams))
        return config.with_(num_candidates=min(config.num_candidates, rows))

    def retrieved(self, source: list[int], context_vec: np.ndarray) -> list[tuple[str, float]]:
        """Top real replies from the index, scored by the generator (mean token log-prob)."""
        return self.retrieved_batch([source], [context_vec])[0]

    def retrieved_batch(self, sources: list[list[int]], context_vecs: list[np.ndarray]) -> list[list[tuple[str, float]]]:
        """:meth:`retrieved` for several sources, scored in one decoder run (fewer per source under load)."""
        if self.index is None or not sources:
            return [[] for _ in sources]
        k = min(self.retrieve_k, max(1, self.max_rows // len(sources)))
        texts = [[t for t, _ in found] for found in self.index.search_batch(np.stack(context_vecs), k)]
        flat = self._mean_logprobs([sources[i] for i, ts in enumerate(texts) for _ in ts],
                                   [t for ts in texts for t in ts])
        return [list(zip(ts, map(float, scores))) for ts, scores in zip(texts, _split(flat, map(len, texts)))]

    def priors(self, texts: list[str]) -> np.ndarray:
        """Mean token log-prob of each text as a reply to an empty prompt (the MMI term)."""
        return self._mean_logprobs([self.source_ids([], [], [])] * len(texts), texts)

    def _mean_logprobs(self, sources: list[list[int]], texts: list[str]) -> np.ndarray:
        """Mean token log-prob of each text (its first 40 tokens and the end token) as the reply to its source,
        in one teacher-forced decoder run."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        targets = [self.codec.encode(t)[:40] + [self.model.eos_id] for t in texts]
        logp = self.model.score(sources, targets)
        return np.array([row.sum() / len(t) for row, t in zip(logp, targets)], dtype=np.float32)

    def profile_with_facts(self, profile: np.ndarray | None, fact_vecs: np.ndarray | None) -> np.ndarray | None:
        """R_u for ranking: the unit message average plus the unit mean of the user's fact embeddings."""
        facts_mean = fact_vecs.mean(0) if fact_vecs is not None and len(fact_vecs) else None
        parts = [v / np.linalg.norm(v) for v in (profile, facts_mean) if v is not None and np.any(v)]
        return np.sum(parts, axis=0).astype(np.float32) if parts else None

    def features(self, context_vec: np.ndarray | None, cands: list[tuple[str, float]],
                 profile: np.ndarray | None, recent: list[str], vectors: np.ndarray | None = None,
                 claims: np.ndarray | None = None, prior: np.ndarray | None = None,
                 taste: Taste | None = None) -> CandidateFeatures:
        """Score parts of ``cands`` ((text, mean log-prob) pairs); without an encoder (``context_vec``
        None) ranker, profile and hub parts are 0. ``vectors``: the embeddings of the candidate texts then
        of ``recent``, when the caller embedded them already; ``prior``: :meth:`priors` of the texts;
        ``taste``: P(u, c) in the space extended by the user's reactions."""
        texts = [t for t, _ in cands]
        gen = np.array([s for _, s in cands], dtype=np.float32)
        prior = np.zeros(len(texts), dtype=np.float32) if prior is None else prior
        hub = np.zeros(len(texts), dtype=np.float32)
        seen = {t.lower() for t in recent}
        echo = np.array([t.lower() in seen for t in texts], dtype=np.float32)
        if claims is not None:  # a claim of the user's facts (or of another name) ranks below every other candidate
            echo = np.maximum(echo, CLAIM_PENALTY * claims)
        if context_vec is None:
            ranker = np.zeros(len(texts), dtype=np.float32)
            prof = np.zeros(len(texts), dtype=np.float32)
        else:
            vecs = self.encoder.embed(texts + recent) if vectors is None else vectors
            vecs, recent_vecs = vecs[: len(texts)], vecs[len(texts):]
            ranker = vecs @ context_vec
            prof = recommender_score(profile, vecs) if taste is None else taste.score(profile, vecs, texts)
            if self.index is not None:
                hub = self.index.hubness(vecs)
            if recent:  # near-copies of a recent turn ("what do you like to do for fun??") count as repeats
                echo = np.maximum(echo, ((vecs @ recent_vecs.T).max(1) > NEAR_COPY).astype(np.float32))
        return CandidateFeatures(texts, ranker, gen, prof, echo, prior, hub)

    def weights_for(self, style: str) -> RankWeights:
        """The ranking weights, scaled for ``style``."""
        scale = STYLE_WEIGHTS.get(style, {})
        return replace(self.weights, **{k: getattr(self.weights, k) * v for k, v in scale.items()})

    def rank(self, context_vec: np.ndarray | None, cands: list[tuple[str, float]], profile: np.ndarray | None,
             recent: list[str], style: str = "balanced", vectors: np.ndarray | None = None,
             claims: np.ndarray | None = None, prior: np.ndarray | None = None,
             taste: Taste | None = None) -> list[ScoredReply]:
        """Score candidates, best first; a candidate repeating (or nearly copying) a ``recent`` turn loses 1,
        one claiming the user's facts (``claims``) CLAIM_PENALTY; with a ``taste``, λ is the user's λ_u."""
        f = self.features(context_vec, cands, profile, recent, vectors, claims, prior, taste)
        weights = self.weights_for(style)
        if taste is not None:
            weights = replace(weights, profile=taste.weight(weights.profile))
        scores = weights.score(f)
        return [ScoredReply(f.texts[i], float(scores[i]), float(f.ranker[i]), float(f.generator[i]),
                            float(f.profile[i]), bool(f.echo[i] > 0)) for i in np.argsort(-scores)]

    def context_vector(self, turns: list[Turn]) -> np.ndarray | None:
        """Sentence vector of the last two turns (None without an encoder)."""
        if self.encoder is None or not turns:
            return None
        return self.encoder.embed([context_text([t.text for t in turns])])[0]

    def reply(self, turns: list[Turn], persona: list[str], user_facts: list[str],
              profile: np.ndarray | None, style: str = "balanced") -> ScoredReply:
        """The best reply to the last turn, among generated and retrieved candidates."""
        return self.reply_batch([ReplyRequest(turns, persona, user_facts, profile, style)])[0][0]

    def reply_batch(self, requests: list[ReplyRequest]) -> list[tuple[ScoredReply | None, np.ndarray | None]]:
        """For each request: the best reply (None where ``needs_reply`` is False) and the embedding of
        its message (None without an encoder). All requests share each encoder and decoder run."""
        asking = [i for i, r in enumerate(requests) if r.needs_reply and r.turns]
        message_vecs: list[np.ndarray | None] = [None] * len(requests)
        context_vecs: dict[int, np.ndarray] = {}
        if self.encoder is not None:
            embedded = self.encoder.embed([r.message for r in requests] +
                                          [context_text([t.text for t in requests[i].turns]) for i in asking])
            message_vecs = list(embedded[: len(requests)])
            context_vecs = dict(zip(asking, embedded[len(requests):]))
        sources = {i: self.source_ids(requests[i].turns, requests[i].persona, requests[i].user_facts) for i in asking}
        replies: dict[int, ScoredReply] = {}
        fast = [i for i in asking if self.mode == "greedy" and requests[i].style == "balanced"
                and requests[i].taste is None]
        if fast:  # the greedy reply, where it can be sent
            for i, reply in zip(fast, self._choose([requests[i] for i in fast], [sources[i] for i in fast],
                                                   [context_vecs.get(i) for i in fast], greedy=True)):
                if reply.text not in (LOST_FOR_WORDS, SAFE_FALLBACK) and not reply.penalized:
                    replies[i] = reply
        rest = [i for i in asking if i not in replies]
        if rest:
            for i, reply in zip(rest, self._choose([requests[i] for i in rest], [sources[i] for i in rest],
                                                   [context_vecs.get(i) for i in rest], greedy=False)):
                replies[i] = reply
        return [(replies.get(i), message_vecs[i]) for i in range(len(requests))]

    def _choose(self, requests: list[ReplyRequest], sources: list[list[int]], context_vecs: list[np.ndarray | None],
                greedy: bool) -> list[ScoredReply]:
        """The best candidate of each request's pool: the greedy reply alone, or generated and retrieved
        candidates; unsafe candidates never reach ranking."""
        styles = ["greedy" if greedy else r.style for r in requests]
        pools = [dict(g) for g in self.candidates_batch(sources, styles)]
        with_context = [n for n, vec in enumerate(context_vecs) if vec is not None]
        if with_context and not greedy:
            found = self.retrieved_batch([sources[n] for n in with_context], [context_vecs[n] for n in with_context])
            for n, cands in zip(with_context, found):
                for text, score in cands:
                    pools[n].setdefault(text, score)
        had_candidates = [bool(pool) for pool in pools]
        filtered = [n for n, req in enumerate(requests) if req.keep is not None and pools[n]]
        for n, verdicts in zip(filtered, self._map_filters([requests[n].keep for n in filtered],
                                                           [list(pools[n]) for n in filtered])):
            pools[n] = {t: s for (t, s), ok in zip(pools[n].items(), verdicts) if ok}
        recents = [[t.text for t in req.turns[-4:]] for req in requests]
        facts = [req.user_facts for req in requests]
        vectors: list[np.ndarray | None] = [None] * len(requests)
        profiles = [req.profile for req in requests]
        if with_context:  # one encoder run: every pool's candidates, recent turns and user facts
            parts = [[*pool, *recent, *fs] for pool, recent, fs in zip(pools, recents, facts)]
            flat = self.encoder.embed([t for part in parts for t in part])
            for n, rows in enumerate(_split(flat, map(len, parts))):
                cut = len(rows) - len(facts[n])
                vectors[n] = rows[:cut]
                profiles[n] = self.profile_with_facts(profiles[n], rows[cut:])
        priors = self._pool_priors(pools) if not greedy else [None] * len(pools)
        out = []
        for n, req in enumerate(requests):
            if not pools[n]:
                out.append(ScoredReply(SAFE_FALLBACK if had_candidates[n] else LOST_FOR_WORDS, 0.0, 0.0, 0.0, 0.0))
                continue
            CANDIDATES.observe(len(pools[n]))
            claims = req.claims(list(pools[n])) if req.claims is not None else None
            out.append(self.rank(context_vecs[n], list(pools[n].items()), profiles[n], recents[n],
                                 req.style, vectors[n], claims, priors[n], req.taste)[0])
        return out

    def _map_filters(self, keeps: list[Callable[[list[str]], list[bool]]], texts: list[list[str]]) -> list[list[bool]]:
        """Each output filter on its texts; with several, ``filter_threads`` at a time (the safety
        classifier scores one text a run on one thread, so a batch's filters would leave cores idle)."""
        if len(keeps) < 2 or self.filter_threads < 2:
            return [keep(t) for keep, t in zip(keeps, texts)]
        if self._filters is None:
            self._filters = ThreadPoolExecutor(self.filter_threads, thread_name_prefix="rapport-filter")
        return list(self._filters.map(lambda kt: kt[0](kt[1]), zip(keeps, texts)))

    def _pool_priors(self, pools: list[dict[str, float]]) -> list[np.ndarray | None]:
        """:meth:`priors` of every pool's candidates in one decoder run; None for each when MMI is off."""
        if self.weights.mmi == 0:
            return [None] * len(pools)
        return _split(self.priors([t for pool in pools for t in pool]), map(len, pools))


def _split(flat: np.ndarray, sizes) -> list[np.ndarray]:
    """``flat``'s rows cut into consecutive pieces of ``sizes`` rows (one piece per size)."""
    sizes = list(sizes)
    return np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []


def context_text(turns: Sequence[str]) -> str:
    """What the ranker embeds as the context: the last two turns (training uses this too)."""
    return " ".join(turns[-2:])
