"""`ardiff acdc make-stories`: the ACDC paper's story benchmark generator, with any LLM backend.

An LLM writes a six-sentence animal story from three few-shot examples drawn at random from
:data:`FEW_SHOT_STORIES` (our own), sampling at temperature 1.0. The answer is parsed and
validated: exactly six numbered sentences, each non-empty and of sane length. An invalid
answer is retried with a fresh draw of examples; a story that fails every attempt is recorded
as failed, never silently dropped. The backends are the memory module's
(:class:`~ardiff.acdc.memory.TransformersMemory`, :class:`~ardiff.acdc.memory.OpenAIMemory`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from ardiff.acdc.memory.llm import number_lines, parse_numbered_lines, sanitize
from ardiff.utils.seeding import chunk_seed

STORY_LENGTH = 6
FEW_SHOT_STORIES = (
    ("Benny the beagle lived in a small red house.", "His nose twitched at a strange scent.",
     "He followed the trail into the woods.", "A squirrel chattered at him from a branch.",
     "He barked and wagged his tail.", "Then he trotted home for dinner."),
    ("Mila the grey rabbit sat in a field of clover.", "She nibbled a sweet leaf.",
     "A shadow passed over the grass.", "She froze and pressed her ears flat.",
     "The hawk flew away over the hill.", "She hopped back to her burrow."),
    ("Oscar was an old tortoise with a mossy shell.", "Every morning he walked to the pond.",
     "Today a frog sat on his favourite stone.", "He waited patiently beside it.",
     "The frog finally leapt into the water.", "He climbed onto the warm stone and slept."),
    ("A little fox named Pip explored the snowy forest.", "Her paws left tiny prints behind her.",
     "She heard mice moving under the snow.", "She jumped high and dived in head first.",
     "She came up with snow on her whiskers.", "She shook it off and kept hunting."),
    ("Coco the parrot lived on a sunny balcony.", "She loved to copy the kettle's whistle.",
     "One day the kettle was silent.", "She whistled louder and louder.",
     "Her owner laughed and made tea.", "She ruffled her green feathers proudly."),
    ("Bruno was a brown bear who loved honey.", "He found a hive high in an oak tree.",
     "He climbed slowly up the rough bark.", "Angry bees buzzed around his ears.",
     "He grabbed a piece of comb and slid down.", "He licked his sticky paws by the river."),
    ("Luna the white cat watched the moon from the roof.", "A moth fluttered past her whiskers.",
     "She swatted at it with one paw.", "She slipped on the wet tiles.",
     "She landed softly in a flower bed.", "She washed her face as if nothing had happened."),
)
GENERATOR_SYSTEM = "You write short, simple stories for children's picture books."
GENERATOR_TEMPLATE = (
    "Here are three example stories. Each has exactly {n} numbered sentences, one per line; the first "
    "sentence names an animal, and later sentences refer to it mostly by pronoun.\n\n{examples}\n\n"
    "Write one new story about a different animal in the same style: exactly {n} numbered sentences, "
    "one per line, and nothing else."
)


def generator_messages(examples: list[tuple[str, ...]]) -> list[dict]:
    shown = "\n\n".join(f"Story {k}:\n{number_lines(story)}" for k, story in enumerate(examples, 1))
    return [{"role": "system", "content": GENERATOR_SYSTEM},
            {"role": "user", "content": GENERATOR_TEMPLATE.format(n=STORY_LENGTH, examples=shown)}]


def parse_story(text: str, length: int = STORY_LENGTH, max_chars: int = 200) -> list[str] | None:
    """Exactly ``length`` numbered sentences, each non-empty and at most ``max_chars``; else None."""
    sentences = [sanitize(s, max_chars=10 * max_chars) for s in parse_numbered_lines(text, length)]
    if len(sentences) != length or any(not s or len(s) > max_chars or not any(c.isalpha() for c in s)
                                       for s in sentences):
        return None
    sentences = [s.rstrip(",;: ") for s in sentences]  # "She slipped on the tiles," -> "... tiles."
    return [s if s[-1] in ".!?\"'" else s + "." for s in sentences]


def make_stories(llm, num: int, seed: int = 0, attempts: int = 3) -> Iterator[dict]:
    """Yield ``num`` records ``{"id", "sentences", "attempts", "examples", "ok"}``.

    ``llm``: anything with ``complete(messages) -> str`` (the memory backends). Its sampling
    settings are the caller's: the paper samples at temperature 1.0. Deterministic given the
    seed for backends that draw from torch's global generator (seeded per attempt here).
    """
    if num < 0 or attempts < 1:
        raise ValueError(f"num={num} must be >= 0 and attempts={attempts} >= 1")
    import torch

    rng = random.Random(seed)
    for index in range(num):
        record = {"id": index, "sentences": None, "attempts": 0, "examples": [], "ok": False}
        for attempt in range(attempts):
            chosen = rng.sample(range(len(FEW_SHOT_STORIES)), 3)
            torch.manual_seed(chunk_seed(seed, index * 101 + attempt))  # per story and attempt
            if hasattr(llm, "expected_lines"):
                llm.expected_lines = STORY_LENGTH
            record["attempts"], record["examples"] = attempt + 1, chosen
            try:
                answer = llm.complete(generator_messages([FEW_SHOT_STORIES[k] for k in chosen]))
            except Exception as error:  # a backend failure costs an attempt, not the run
                record["error"] = f"{type(error).__name__}: {error}"
                continue
            sentences = parse_story(answer)
            if sentences is not None:
                record.update(sentences=sentences, ok=True)
                record.pop("error", None)
                break
            record["error"] = "answer was not exactly six numbered sentences"
        yield record


def write_jsonl(records, path) -> tuple[int, int]:
    """Write records atomically; returns (valid, total)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    valid = total = 0
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
            total += 1
            valid += bool(record["ok"])
    tmp.replace(path)
    return valid, total


def build_story_llm(spec: str):
    """``smollm2`` | ``transformers:PATH`` | ``openai:MODEL@BASE_URL``, sampling at temperature 1.0."""
    from ardiff.acdc.memory import OpenAIMemory, TransformersMemory

    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "smollm2":
        return TransformersMemory.smollm2(do_sample=True, temperature=1.0, prefill="1.")
    if kind == "transformers" and arg:
        return TransformersMemory(arg, do_sample=True, temperature=1.0, prefill="1.")
    if kind == "openai" and "@" in arg:
        model, _, base_url = arg.partition("@")
        return OpenAIMemory(model, base_url, temperature=1.0)
    raise ValueError(f"--llm {spec!r}: use smollm2, transformers:PATH (directory or .gguf) or openai:MODEL@BASE_URL")
