"""A small text encoder for the story world, trained on the world's own sentences.

:class:`StoryTextEncoder` maps a sentence to one vector (mean-pooled output of a two-layer
transformer over word tokens), the condition vector of the story models. It is trained to
predict what the sentence states about the frame: kind, item colour, background, size,
grid position and action, each with an "unstated" class. So "It hops to the left." and
"The sneaker grows." give vectors that say what they say and no more, and a sentence the
memory module rewrote ("Nova the yellow sneaker hops to the left.") says more.

The labels come from :func:`sentence_attributes`, a keyword reader of the world's
vocabulary; the encoder is what the models see, the keyword reader only teaches it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ardiff.worlds.checkpoint import load_world_model, save_world_model
from ardiff.worlds.story import (
    _ACTION_PHRASES,
    _INTRO,
    ACTIONS,
    BACKGROUNDS,
    ITEM_COLOURS,
    KIND_NAMES,
    NAMES,
    SIZES,
    WHERE,
    StoryWorld,
)

WHERE_NAMES = tuple(w for row in WHERE for w in row)
# Attribute -> its values; index len(values) means "the sentence does not say".
ATTRIBUTES = {
    "kind": KIND_NAMES, "colour": tuple(ITEM_COLOURS), "background": tuple(BACKGROUNDS),
    "size": tuple(SIZES), "where": WHERE_NAMES, "action": ACTIONS,
}
_TOKEN = re.compile(r"[a-z][a-z\-]*")
_WHERE_RE = re.compile(r"\b(?:at|in) the (" + "|".join(sorted(WHERE_NAMES, key=len, reverse=True)) + r")\b")
_ACTION_RES = {a: re.compile(r"\b(" + "|".join(map(re.escape, phrases)) + r")\b")
               for a, phrases in _ACTION_PHRASES.items()}


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def sentence_attributes(text: str) -> dict[str, int]:
    """Index of every attribute the sentence states (``len(values)`` when it does not)."""
    low = text.lower()
    words = set(tokenize(low))
    out = {}
    for attr in ("kind", "colour", "background", "size"):
        values = ATTRIBUTES[attr]
        found = [i for i, v in enumerate(values) if v in words]
        out[attr] = found[0] if len(found) == 1 else len(values)
    m = _WHERE_RE.search(low)
    out["where"] = WHERE_NAMES.index(m.group(1)) if m else len(WHERE_NAMES)
    found = [i for i, a in enumerate(ACTIONS) if _ACTION_RES[a].search(low)]
    out["action"] = found[0] if len(found) == 1 else len(ACTIONS)
    return out


# ---------------------------------------------------------------------------
#                                 The encoder
# ---------------------------------------------------------------------------
class StoryTextEncoder(nn.Module):
    """Word tokens -> (dim,) sentence vector. ``vocab`` lists the known words; others are <unk>."""

    PAD, UNK = 0, 1

    def __init__(self, vocab: list[str], dim: int = 64, depth: int = 2, heads: int = 4, max_len: int = 32):
        super().__init__()
        self.vocab = list(vocab)
        self.index = {w: i + 2 for i, w in enumerate(self.vocab)}
        self.dim, self.depth, self.heads, self.max_len = dim, depth, heads, max_len
        self.embed = nn.Embedding(len(self.vocab) + 2, dim, padding_idx=self.PAD)
        self.position = nn.Parameter(torch.zeros(max_len, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.heads_out = nn.ModuleDict({a: nn.Linear(dim, len(v) + 1) for a, v in ATTRIBUTES.items()})
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def config(self) -> dict:
        return {"vocab": self.vocab, "dim": self.dim, "depth": self.depth, "heads": self.heads, "max_len": self.max_len}

    def token_ids(self, texts: list[str]) -> torch.Tensor:
        rows = [[self.index.get(w, self.UNK) for w in tokenize(t)][: self.max_len] or [self.UNK] for t in texts]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids

    def forward(self, texts: list[str]) -> torch.Tensor:
        """(N, dim) sentence vectors."""
        ids = self.token_ids(texts).to(self.position.device)
        pad = ids == self.PAD
        h = self.layers(self.embed(ids) + self.position[: ids.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.norm((h * keep).sum(1) / keep.sum(1))

    @torch.no_grad()
    def encode(self, texts: list[str] | str) -> torch.Tensor:
        """Cached, gradient-free :meth:`forward` (the frozen encoder the models are conditioned on)."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            was_training = self.training
            self.eval()
            for t, v in zip(missing, self(missing)):
                self._cache[t] = v.cpu()
            self.train(was_training)
        out = torch.stack([self._cache[t] for t in texts])
        return out[0] if single else out

    def logits(self, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        return {a: head(vectors) for a, head in self.heads_out.items()}

    def save_pretrained(self, directory) -> Path:
        return save_world_model(self, directory, self.config)

    @classmethod
    def from_pretrained(cls, directory=None) -> "StoryTextEncoder":
        """Load a saved encoder; ``None`` or ``"story-text"`` loads the shipped one."""
        return load_world_model(cls, directory or "story-text")


# ---------------------------------------------------------------------------
#                                   Training
# ---------------------------------------------------------------------------
def training_sentences(world: StoryWorld, count: int, seed: int = 0) -> list[str]:
    """Story sentences, captions and the forms a memory module writes ("Nova the yellow
    sneaker hops left.", "The yellow sneaker on the teal floor grows.")."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]
    out: list[str] = []
    i = 0
    while len(out) < count:
        story = world.story(i)
        i += 1
        out.extend(story.sentences)
        s = story.states[-1]
        out.append(s.caption(with_layout=True))
        out.append(s.caption(with_layout=False))
        phrase = pick(_ACTION_PHRASES[pick(ACTIONS)])
        subject = pick((f"{story.name} the {s.colour} {s.kind}", f"{story.name}, the {s.size} {s.colour} {s.kind},",
                        f"The {s.colour} {s.kind} on the {s.background} floor", f"The {s.colour} {s.kind}",
                        f"{story.name}, the {s.colour} {s.kind} on the {s.background} floor,"))
        out.append(f"{subject} {phrase}.")
    return out[:count]


def build_vocab() -> list[str]:
    words: set[str] = set()
    texts = list(_INTRO) + [p for ps in _ACTION_PHRASES.values() for p in ps] + list(NAMES) + list(WHERE_NAMES)
    texts += list(KIND_NAMES) + list(ITEM_COLOURS) + list(BACKGROUNDS) + list(SIZES)
    texts += ["it she he the a an one of on at floor bigger smaller"]
    for t in texts:
        words.update(tokenize(t.replace("{", " ").replace("}", " ")))
    return sorted(words - {"name", "size", "colour", "kind", "where", "bg"})


def train_text_encoder(world: StoryWorld, steps: int = 1500, batch_size: int = 128, seed: int = 0,
                       log=print) -> tuple[StoryTextEncoder, dict]:
    """Train on the world's sentences; returns the encoder and per-attribute held-out accuracy."""
    torch.manual_seed(seed)
    encoder = StoryTextEncoder(build_vocab())
    sentences = training_sentences(world, 40000, seed)
    held_out = training_sentences(StoryWorld("test", length=world.length, seed=seed + 1), 4000, seed + 1)
    labels = lambda texts: {a: torch.tensor([sentence_attributes(t)[a] for t in texts]) for a in ATTRIBUTES}
    train_labels = labels(sentences)
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(sentences), (batch_size,), generator=g)
        logits = encoder.logits(encoder([sentences[i] for i in idx]))
        loss = sum(F.cross_entropy(logits[a], train_labels[a][idx]) for a in ATTRIBUTES)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step + 1) % 250 == 0:
            log(f"text encoder step {step + 1}/{steps}: loss {loss.item():.4f}")
    encoder.eval()
    with torch.no_grad():
        logits = encoder.logits(encoder(held_out))
    truth = labels(held_out)
    accuracy = {a: (logits[a].argmax(-1) == truth[a]).float().mean().item() for a in ATTRIBUTES}
    return encoder, accuracy
