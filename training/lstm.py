"""The classic family: a bidirectional LSTM encoder and an LSTM decoder with Luong attention (PyTorch).

Same tokenizer, prompt layout and training loop as the Transformer (``rapport-train train --family lstm``).

- Encoder: ``layers`` bidirectional LSTM layers over the shared token embeddings. Each direction is its own
  unidirectional LSTM, and the backward one reads every row reversed within its own length, so a row's
  states never depend on the padding after it (a batch of users decodes exactly as each user alone).
- Bridge: the decoder's initial states are a projection of the masked mean of the encoder states.
- Decoder: ``layers`` LSTM layers over the reply tokens, then Luong's *global attention* with the *general*
  score (Luong et al. 2015): a_t = softmax(h_t W_a H_enc^T), c_t = a_t H_enc, h~_t = tanh(W_c [c_t; h_t]),
  and the output layer tied to the token embeddings through a projection to their width. Luong rather than
  Bahdanau because the attention comes *after* the recurrent step: the whole reply runs through one LSTM call
  when training (teacher forcing) and when scoring, and a decoding step is one LSTM step plus one attention
  read. Input feeding (h~_{t-1} into step t) is left out for the same reason: it would force a Python loop
  per token in training, several times slower on a CPU.

:class:`LstmSeq2Seq` offers what ``training/train.py`` uses of a Hugging Face model (``forward`` with
``loss`` and ``logits``, greedy ``generate``, ``config.to_dict()``), and :mod:`training.lstm_export` writes
it in the engine's runtime layout.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
from torch import nn


@dataclass
class LstmConfig:
    """Sizes and special token ids."""

    vocab_size: int = 30522
    embed_dim: int = 256
    hidden: int = 512  # the decoder's; each encoder direction has hidden // 2
    encoder_layers: int = 2
    decoder_layers: int = 2
    dropout: float = 0.2
    pad_token_id: int = 0
    decoder_start_token_id: int = 101
    eos_token_id: int = 102
    model_type: str = "lstm"

    def to_dict(self) -> dict:
        """The config as a plain dict (what checkpoints and ``config.json`` hold)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LstmConfig":
        """A config from :meth:`to_dict` output (unknown keys ignored)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` (batch, time, ...) with its first ``lengths[b]`` steps reversed, the rest in place."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    return torch.gather(x, 1, index[..., None].expand_as(x))


class LstmSeq2Seq(nn.Module):
    """Bidirectional LSTM encoder, LSTM decoder with Luong (general) attention, tied output layer."""

    def __init__(self, config: LstmConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        half = c.hidden // 2
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.pad_token_id)
        self.forward_layers = nn.ModuleList(
            nn.LSTM(c.embed_dim if i == 0 else c.hidden, half, batch_first=True) for i in range(c.encoder_layers))
        self.backward_layers = nn.ModuleList(
            nn.LSTM(c.embed_dim if i == 0 else c.hidden, half, batch_first=True) for i in range(c.encoder_layers))
        self.bridge_h = nn.Linear(c.hidden, c.decoder_layers * c.hidden)
        self.bridge_c = nn.Linear(c.hidden, c.decoder_layers * c.hidden)
        self.decoder = nn.LSTM(c.embed_dim, c.hidden, num_layers=c.decoder_layers, batch_first=True,
                               dropout=c.dropout if c.decoder_layers > 1 else 0.0)
        self.attention = nn.Linear(c.hidden, c.hidden, bias=False)  # W_a of the general score
        self.combine = nn.Linear(2 * c.hidden, c.hidden)  # W_c
        self.to_embed = nn.Linear(c.hidden, c.embed_dim)
        self.output_bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.dropout = nn.Dropout(c.dropout)

    # --- parts the export reuses -----------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encoder states (batch, source, hidden); positions past a row's length are not meaningful."""
        lengths = attention_mask.sum(1)
        x = self.dropout(self.embed(input_ids))
        for fwd, bwd in zip(self.forward_layers, self.backward_layers):
            ahead = fwd(x)[0]
            back = reverse_within_length(bwd(reverse_within_length(x, lengths))[0], lengths)
            x = self.dropout(torch.cat([ahead, back], dim=-1))
        return x

    def initial_state(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder (h, c), each (batch, layers, hidden), from the masked mean of the encoder states."""
        m = mask.to(hidden.dtype)[..., None]
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        shape = (hidden.shape[0], self.config.decoder_layers, self.config.hidden)
        return torch.tanh(self.bridge_h(mean)).view(shape), self.bridge_c(mean).view(shape)

    def decode(self, tokens: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor,
               state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits (batch, tokens, vocab) of the reply tokens given the state before them, and the state after
        them (states are (batch, layers, hidden))."""
        h, c = (s.transpose(0, 1).contiguous() for s in state)
        out, (h, c) = self.decoder(self.dropout(self.embed(tokens)), (h, c))
        scores = torch.bmm(self.attention(out), hidden.transpose(1, 2))  # (batch, tokens, source)
        scores = scores.masked_fill(mask[:, None, :] == 0, torch.finfo(scores.dtype).min)
        context = torch.bmm(torch.softmax(scores, dim=-1), hidden)
        combined = torch.tanh(self.combine(torch.cat([context, out], dim=-1)))
        logits = self.to_embed(self.dropout(combined)) @ self.embed.weight.T + self.output_bias
        return logits, (h.transpose(0, 1), c.transpose(0, 1))

    # --- what training/train.py calls --------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor,
                labels: torch.Tensor | None = None) -> SimpleNamespace:
        """Teacher-forced logits and, with ``labels`` (-100 on padding), the mean token cross-entropy."""
        hidden = self.encode(input_ids, attention_mask)
        logits, _ = self.decode(decoder_input_ids, hidden, attention_mask, self.initial_state(hidden, attention_mask))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 30, num_beams: int = 1,
                 do_sample: bool = False, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy replies, (batch, 1 + generated) starting with the start token, padded after the end token."""
        if num_beams != 1 or do_sample:
            raise ValueError("LstmSeq2Seq.generate is greedy only (the engine's runtime does beam and sampling)")
        mask = attention_mask if attention_mask is not None else (input_ids != self.config.pad_token_id).long()
        hidden = self.encode(input_ids, mask)
        state = self.initial_state(hidden, mask)
        tokens = torch.full((input_ids.shape[0], 1), self.config.decoder_start_token_id, device=input_ids.device)
        out, done = [tokens], torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits, state = self.decode(tokens, hidden, mask, state)
            tokens = logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.where(done[:, None], torch.full_like(tokens, self.config.pad_token_id), tokens)
            out.append(tokens)
            done |= tokens[:, 0] == self.config.eos_token_id
            if done.all():
                break
        return torch.cat(out, dim=1)


def build_lstm(config: LstmConfig, seed: int = 0) -> LstmSeq2Seq:
    """A freshly initialised model (uniform weights as in the LSTM literature, zero biases but the forget
    gates' at 1)."""
    torch.manual_seed(seed)
    model = LstmSeq2Seq(config)
    for name, p in model.named_parameters():
        if "bias" in name:
            nn.init.zeros_(p)
            if name.endswith(("bias_ih_l0", "bias_ih_l1", "bias_ih_l2", "bias_ih_l3")):
                n = p.shape[0] // 4
                p.data[n: 2 * n] = 1.0  # forget gate
        elif p.dim() > 1:
            nn.init.uniform_(p, -0.08, 0.08)
    with torch.no_grad():
        model.embed.weight[config.pad_token_id].zero_()
    return model
