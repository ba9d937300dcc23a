"""`ardiff acdc make-stories`: the ACDC paper's story benchmark generator (Algorithm 1), with
any LLM backend.

The prompt is the project's own wording in the structure the paper describes: a system
message that sets the task and holds three example stories drawn at random from
:data:`FEW_SHOT_STORIES` (ten hand-made stories, the project's own), and a user message that
asks for a new six-sentence story about a named animal, the first sentence describing the
background and the rest its motion, simple and concise, not copying the examples; sampling at
temperature 1.0. ``--prompt-file`` replaces the system message's template (it must hold
``{examples}``; ``{n}`` is the number of sentences). The answer is parsed and
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
    ("Pepper the otter floated in a cold green river.", "She rolled onto her back in the current.",
     "She dived down after a shining pebble.", "She popped up with it between her paws.",
     "She juggled it from paw to paw.", "Then she swam to the bank to rest."),
    ("Rocky the mountain goat stood on a steep grey cliff.", "He leapt to a narrow ledge below.",
     "His hooves slipped on the loose stones.", "He caught his balance with a jump.",
     "He climbed back up to the top.", "He chewed a tuft of grass in the sun."),
    ("Dot the ladybird rested on a wide sunflower leaf.", "She crawled to the edge of the leaf.",
     "She opened her red wings.", "She buzzed across the garden.",
     "She landed on a daisy by the fence.", "She folded her wings and stayed still."),
)
# {examples}: three numbered example stories; {n}: the number of sentences.
GENERATOR_SYSTEM_TEMPLATE = """\
You write short, simple stories for children's picture books, one sentence per picture. \
Here are three example stories; each has exactly {n} numbered sentences.

{examples}"""
GENERATOR_REQUEST = (
    "Write one new story about an animal with a name, in exactly {n} numbered sentences, one per line. "
    "The first sentence names the animal and describes where it is; the other sentences describe what "
    "the animal does and how it moves, referring to it mostly by pronoun. Keep every sentence simple and "
    "concise, do not copy the examples, and answer with the numbered sentences only."
)


def check_generator_template(template: str) -> str:
    """A system-message template must hold {examples} and format with only {examples} and {n}."""
    if "{examples}" not in template:
        raise ValueError("the template must contain the {examples} field (where the example stories go)")
    try:
        template.format(n=STORY_LENGTH, examples="Story 1: ...")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"the template must format with only {{examples}} and {{n}} (double other braces): "
                         f"{e!r}") from None
    return template


def generator_messages(examples: list[tuple[str, ...]], template: str = GENERATOR_SYSTEM_TEMPLATE) -> list[dict]:
    shown = "\n\n".join(f"Story {k}:\n{number_lines(story)}" for k, story in enumerate(examples, 1))
    return [{"role": "system", "content": template.format(n=STORY_LENGTH, examples=shown)},
            {"role": "user", "content": GENERATOR_REQUEST.format(n=STORY_LENGTH)}]


def parse_story(text: str, length: int = STORY_LENGTH, max_chars: int = 200) -> list[str] | None:
    """Exactly ``length`` numbered sentences, each non-empty and at most ``max_chars``; else None."""
    sentences = [sanitize(s, max_chars=10 * max_chars) for s in parse_numbered_lines(text, length)]
    if len(sentences) != length or any(not s or len(s) > max_chars or not any(c.isalpha() for c in s)
                                       for s in sentences):
        return None
    sentences = [s.rstrip(",;: ") for s in sentences]  # "She slipped on the tiles," -> "... tiles."
    return [s if s[-1] in ".!?\"'" else s + "." for s in sentences]


def make_stories(llm, num: int, seed: int = 0, attempts: int = 3,
                 template: str = GENERATOR_SYSTEM_TEMPLATE) -> Iterator[dict]:
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
                answer = llm.complete(generator_messages([FEW_SHOT_STORIES[k] for k in chosen], template))
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
