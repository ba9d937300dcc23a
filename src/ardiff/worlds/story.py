"""The story world: short stories about one tinted Fashion-MNIST item, with exact ground truth.

A frame is 32x32 RGB: a real Fashion-MNIST item (train split for training, test split for
evaluation), tinted in one of :data:`ITEM_COLOURS`, scaled to one of :data:`SIZES`, placed
in a 3x3 grid of positions, on a flat background from :data:`BACKGROUNDS`.

A story is a list of sentences, one frame each. Sentence 1 introduces a named subject with
its size, colour, kind, position and background ("Nova, the small yellow sneaker, rests at
the top left of a teal floor."). Every later sentence moves the subject one cell or changes
its size, and names it only by a pronoun or a partial reference ("It hops to the left.",
"The sneaker grows.", "The yellow one sinks lower."): one later sentence alone does not say
what to draw, which is the situation ACDC's memory module exists for.

Everything is a pure function of a seed: :func:`make_story` (grammar) and
:func:`render_frame` (pixels) make :class:`StoryWorld` reproducible story by story.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from ardiff.data.fashion_mnist import load_fashion_mnist
from ardiff.utils.seeding import RANDOM_FRAME_STREAM, STORY_STREAM, seeded_generator

CANVAS = 32
# Fashion-MNIST label -> kind. Shirt, pullover and coat are left out: they are too often
# confused with each other and with T-shirts for a reader to verify them reliably.
KINDS = {0: "t-shirt", 1: "trouser", 3: "dress", 5: "sandal", 7: "sneaker", 8: "bag", 9: "boot"}
KIND_NAMES = tuple(KINDS.values())
ITEM_COLOURS = {
    "red": (230, 40, 40), "yellow": (245, 215, 30), "green": (40, 200, 70),
    "blue": (60, 120, 255), "pink": (250, 120, 210), "white": (245, 245, 245),
}
BACKGROUNDS = {"black": (12, 12, 12), "navy": (20, 30, 95), "teal": (15, 100, 100), "maroon": (100, 25, 35)}
SIZES = {"small": 16, "large": 24}
# Position names on the 3x3 grid, indexed [row][col].
WHERE = (("top left", "top", "top right"), ("left", "centre", "right"), ("bottom left", "bottom", "bottom right"))
ACTIONS = ("left", "right", "up", "down", "grow", "shrink")
NAMES = ("Nova", "Milo", "Luna", "Pip", "Otto", "Ziggy", "Remy", "Juno", "Kiki", "Felix", "Tess", "Ollie",
         "Nell", "Rex", "Suki", "Hugo", "Ivy", "Moss", "Wren", "Bram")
PRONOUNS = ("It", "She", "He")

_INTRO = (
    "{Name}, the {size} {colour} {kind}, rests at the {where} of a {bg} floor.",
    "Meet {Name}, a {size} {colour} {kind} at the {where} of a {bg} floor.",
    "At the {where} of a {bg} floor sits {Name}, a {size} {colour} {kind}.",
    "{Name} is a {size} {colour} {kind}, resting at the {where} of a {bg} floor.",
)
_ACTION_PHRASES = {
    "left": ("hops to the left", "slides left", "moves to the left", "drifts left"),
    "right": ("hops to the right", "slides right", "moves to the right", "drifts right"),
    "up": ("jumps up", "floats upward", "moves up", "climbs higher"),
    "down": ("drops down", "sinks lower", "moves down", "falls a little"),
    "grow": ("grows", "gets bigger", "swells up"),
    "shrink": ("shrinks", "gets smaller", "shrinks down"),
}


# ---------------------------------------------------------------------------
#                               State and story
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameState:
    """Everything that determines one frame (the item image aside)."""

    kind: str
    colour: str
    background: str
    size: str
    row: int  # 0..2, top to bottom
    col: int  # 0..2, left to right

    @property
    def where(self) -> str:
        return WHERE[self.row][self.col]

    def caption(self, with_layout: bool = True) -> str:
        """A fully descriptive caption: what a single-frame model needs to draw this frame."""
        if with_layout:
            return f"a {self.size} {self.colour} {self.kind} at the {self.where} of a {self.background} floor."
        return f"a {self.colour} {self.kind} on a {self.background} floor."

    def apply(self, action: str) -> "FrameState":
        moves = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
        if action in moves:
            dr, dc = moves[action]
            return replace(self, row=self.row + dr, col=self.col + dc)
        return replace(self, size="large" if action == "grow" else "small")

    def allowed_actions(self) -> tuple[str, ...]:
        ok = {"left": self.col > 0, "right": self.col < 2, "up": self.row > 0, "down": self.row < 2,
              "grow": self.size == "small", "shrink": self.size == "large"}
        return tuple(a for a in ACTIONS if ok[a])


@dataclass
class Story:
    """Sentences, the true state of every frame, the action behind each later sentence, and
    the index of the Fashion-MNIST item (in its split) that plays the subject."""

    name: str
    sentences: list[str]
    states: list[FrameState]
    actions: list[str | None]  # None for the introduction
    item_index: int
    split: str = "train"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sentences)

    def to_dict(self) -> dict:
        return {"name": self.name, "sentences": self.sentences, "actions": self.actions,
                "states": [s.__dict__ for s in self.states], "item_index": self.item_index, "split": self.split}


def _pick(seq, g: torch.Generator):
    return seq[int(torch.randint(len(seq), (1,), generator=g))]


def make_story(g: torch.Generator, item_index: int, kind: str, length: int = 6, split: str = "train") -> Story:
    """One story of ``length`` sentences about the item ``item_index`` (of kind ``kind``),
    all choices drawn from ``g``."""
    if length < 1:
        raise ValueError(f"story length={length} must be >= 1")
    name = _pick(NAMES, g)
    state = FrameState(kind=kind, colour=_pick(tuple(ITEM_COLOURS), g), background=_pick(tuple(BACKGROUNDS), g),
                       size=_pick(tuple(SIZES), g), row=int(torch.randint(3, (1,), generator=g)),
                       col=int(torch.randint(3, (1,), generator=g)))
    intro = _pick(_INTRO, g).format(Name=name, size=state.size, colour=state.colour, kind=state.kind,
                                    where=state.where, bg=state.background)
    pronoun = _pick(PRONOUNS, g)
    sentences, states, actions = [intro], [state], [None]
    for _ in range(length - 1):
        action = _pick(state.allowed_actions(), g)
        state = state.apply(action)
        u = float(torch.rand((), generator=g))
        # Partial references: a pronoun most often, else the kind, the colour, or the name alone.
        subject = (pronoun if u < 0.5 else f"The {kind}" if u < 0.7 else f"The {state.colour} one" if u < 0.85
                   else name)
        sentences.append(f"{subject} {_pick(_ACTION_PHRASES[action], g)}.")
        states.append(state)
        actions.append(action)
    return Story(name, sentences, states, actions, item_index, split)


# ---------------------------------------------------------------------------
#                 Reading a story back from its text
# ---------------------------------------------------------------------------
def _intro_pattern(template: str) -> re.Pattern:
    """An intro template -> a regex whose named groups are its slots (exact words only)."""
    where = sorted((w for row in WHERE for w in row), key=len, reverse=True)  # "top left" before "top"
    slots = {"Name": r"[A-Z][A-Za-z'-]*", "size": "|".join(SIZES), "colour": "|".join(ITEM_COLOURS),
             "kind": "|".join(KINDS.values()), "where": "|".join(where), "bg": "|".join(BACKGROUNDS)}
    pattern = re.escape(template)
    for slot, choices in slots.items():
        pattern = pattern.replace(re.escape("{" + slot + "}"), f"(?P<{slot}>{choices})")
    return re.compile(f"^{pattern}$")


_INTRO_PATTERNS = tuple(_intro_pattern(t) for t in _INTRO)
_PHRASE_ACTIONS = {phrase: action for action, phrases in _ACTION_PHRASES.items() for phrase in phrases}
_ACTION_SENTENCE = re.compile(
    r"^.+? (?P<phrase>" + "|".join(sorted(map(re.escape, _PHRASE_ACTIONS), key=len, reverse=True))
    + r")\.$")
_WHERE_CELL = {w: (r, c) for r, row in enumerate(WHERE) for c, w in enumerate(row)}


def read_story_states(sentences: list[str]) -> list[FrameState]:
    """The frame state each sentence leaves, read from the text alone (the inverse of
    :func:`make_story`'s grammar; state i depends on sentences 0..i only)."""
    if not sentences:
        return []
    intro = sentences[0].strip()
    match = next((m for m in (p.match(intro) for p in _INTRO_PATTERNS) if m), None)
    if match is None:
        raise ValueError(f"story sentence 1 {intro!r} is not a story-world introduction (one of its four "
                         "phrasings); the state memory reads story-world stories only: use the rule memory "
                         "for free text")
    row, col = _WHERE_CELL[match["where"]]
    state = FrameState(kind=match["kind"], colour=match["colour"], background=match["bg"], size=match["size"],
                       row=row, col=col)
    states = [state]
    for i, sentence in enumerate(sentences[1:], 2):
        m = _ACTION_SENTENCE.match(sentence.strip())
        if m is None:
            raise ValueError(f"story sentence {i} {sentence!r} does not end in one of the story world's actions "
                             f"({', '.join(ACTIONS)} phrasings); the state memory reads story-world stories only")
        action = _PHRASE_ACTIONS[m["phrase"]]
        if action not in state.allowed_actions():
            raise ValueError(f"story sentence {i} {sentence!r} asks for {action!r}, which the subject cannot do "
                             f"from {state.caption()!r}")
        state = state.apply(action)
        states.append(state)
    return states


# ---------------------------------------------------------------------------
#                                  Rendering
# ---------------------------------------------------------------------------
def item_offset(size: str, index: int) -> int:
    """Top-left pixel of grid cell ``index`` (0..2) for an item of ``size``: left, centred, right."""
    return round(index * (CANVAS - SIZES[size]) / 2)


def render_frame(item: torch.Tensor, state: FrameState) -> torch.Tensor:
    """(28, 28) uint8 Fashion-MNIST item -> (3, 32, 32) frame in [-1, 1].

    The item's intensity is its opacity: pixel = background + alpha * (colour - background).
    """
    side = SIZES[state.size]
    alpha = F.interpolate(item.float()[None, None] / 255.0, size=(side, side), mode="bilinear",
                          antialias=True, align_corners=False)[0, 0].clamp(0, 1)
    bg = torch.tensor(BACKGROUNDS[state.background], dtype=torch.float32)[:, None, None] / 255.0
    fg = torch.tensor(ITEM_COLOURS[state.colour], dtype=torch.float32)[:, None, None] / 255.0
    frame = bg.expand(3, CANVAS, CANVAS).clone()
    r, c = item_offset(state.size, state.row), item_offset(state.size, state.col)
    patch = frame[:, r:r + side, c:c + side]
    frame[:, r:r + side, c:c + side] = patch + alpha * (fg - patch)
    return frame * 2 - 1


class StoryWorld:
    """Stories over one Fashion-MNIST split: story ``i`` is a pure function of (seed, split, i).

    ``length`` sentences per story (6 is the trained length; 12 tests generation past it).
    """

    def __init__(self, split: str = "test", root: str | os.PathLike | None = None, length: int = 6, seed: int = 0):
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}; use 'train' or 'test'")
        self.split, self.length, self.seed = split, length, seed
        images, labels = load_fashion_mnist(root, split)
        keep = torch.isin(labels, torch.tensor(list(KINDS)))
        self.item_indices = torch.nonzero(keep).flatten()
        self.images, self.labels = images, labels

    def story(self, index: int, length: int | None = None) -> Story:
        g = seeded_generator(self.seed, STORY_STREAM, 0 if self.split == "train" else 1, index)
        item = int(self.item_indices[int(torch.randint(len(self.item_indices), (1,), generator=g))])
        return make_story(g, item, KINDS[int(self.labels[item])], length or self.length, self.split)

    def render(self, story: Story) -> torch.Tensor:
        """(3, F, 32, 32) ground-truth frames in [-1, 1]."""
        item = self.images[story.item_index]
        return torch.stack([render_frame(item, s) for s in story.states], dim=1)

    def random_frame(self, index: int) -> tuple[torch.Tensor, FrameState]:
        """One frame with every attribute uniform at random (reader and corrector training)."""
        g = seeded_generator(self.seed, RANDOM_FRAME_STREAM, 0 if self.split == "train" else 1, index)
        item = int(self.item_indices[int(torch.randint(len(self.item_indices), (1,), generator=g))])
        state = FrameState(kind=KINDS[int(self.labels[item])], colour=_pick(tuple(ITEM_COLOURS), g),
                           background=_pick(tuple(BACKGROUNDS), g), size=_pick(tuple(SIZES), g),
                           row=int(torch.randint(3, (1,), generator=g)), col=int(torch.randint(3, (1,), generator=g)))
        return render_frame(self.images[item], state), state
