"""LLM memory logic shared by the backends: the refiner prompt (the project's own, in the paper's
structure), parsing, validation, retry, cache, fallback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ardiff.acdc.base import Memory
from ardiff.acdc.memory.rules import RuleBasedMemory, TokenBudget

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


class MemoryFallbackWarning(UserWarning):
    """An LLM memory could not produce a valid rewrite and used its fallback instead."""


# ---------------------------------------------------------------------------------------
# Token budget (the corrector's text encoder: CLIP reads at most 77 tokens, BOS/EOS included)
# ---------------------------------------------------------------------------------------

# The refiner prompt: the project's own wording, in the structure the ACDC paper describes for
# its memory module (Appendix D): a system message that casts the LLM as a text refiner; the
# instruction to rewrite every sentence causally so that it names its subject with the
# subject's key traits; worked examples of an original story and its rewrite; one query for
# the whole story; numbered output. The paper's own prompt text is not reproduced here: pass
# any template (``template=``, or ``ardiff acdc story --memory-prompt FILE``) to use another.
REFINER_SYSTEM = ("You are a text refiner for an image generator that sees one sentence of a story at a time. "
                  "You answer only with the numbered sentences.")

# ``{n}``: the number of sentences; ``{story}``: the story as numbered lines.
REFINER_TEMPLATE = """\
An image generator will draw each sentence of a story separately, without seeing the other \
sentences. Rewrite every sentence so that it can be understood on its own and names its \
subject with the subject's key traits (name, kind, colour, where it is): replace pronouns \
(he, she, it, they, his, her, its, their) and vague references ("the dog", "the girl") with \
the full description of who or what they mean, taken from the earlier sentences. Sentence k \
may only use sentences 1 to k. Keep each sentence short, keep its meaning, and do not add \
new events. A sentence that is already clear stays as it is.

Example 1
Original story:
1. Benny the beagle was a curious puppy.
2. His nose twitched at a scent.
3. He followed it into the garden.
Modified story:
1. Benny the beagle was a curious puppy.
2. Benny the beagle's nose twitched at a scent.
3. Benny the beagle followed the scent into the garden.

Example 2
Original story:
1. An old lighthouse keeper lived on a rocky island.
2. Every night she climbed the spiral stairs.
3. Her lamp shone over the stormy sea.
4. A small boat sailed safely home.
Modified story:
1. An old lighthouse keeper lived on a rocky island.
2. Every night the old lighthouse keeper climbed the spiral stairs of the lighthouse.
3. The old lighthouse keeper's lamp shone over the stormy sea.
4. A small boat sailed safely home past the lighthouse on the rocky island.

Now rewrite this story. Answer with exactly {n} numbered lines ("1." to "{n}."), one per \
sentence, and nothing else.
Original story:
{story}
Modified story:
"""

def check_template(template: str) -> str:
    """A refiner prompt template must hold ``{story}`` and format with only ``{n}`` and ``{story}``."""
    if "{story}" not in template:
        raise ValueError("the template must contain the {story} field (where the numbered sentences go)")
    try:
        template.format(n=1, story="1. x")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"the template must format with only {{n}} and {{story}} (double other braces): "
                         f"{e!r}") from None
    return template


_NUMBERED = re.compile(r"^\s*(?:[-*>]\s*)*(?:\*\*|__)?(?:sentence\s+)?(\d{1,3})\s*(?:[.):\]]|\*\*|__|-)+\s*(.*)$",
                       re.IGNORECASE)
_INLINE = re.compile(r"(?:^|(?<=\s))(\d{1,3})\s*[.):]\s+")


def number_lines(prompts: Sequence[str]) -> str:
    return "\n".join(f"{i}. {' '.join(p.split())}" for i, p in enumerate(prompts, 1))


def parse_numbered_lines(text: str, expected: int | None = None) -> list[str]:
    """The items of a numbered list in ``text``: "1. a", "1) a", "1: a", "**1.** a", "- 1. a".

    Unnumbered lines (chatter, headings) are ignored. A list restarts at 1, so a model that
    echoes the original story before the modified one yields two runs: the last run with
    ``expected`` items (else the last run) is returned. Failing that, a single line holding the
    whole list ("1. a 2. b") is split when its numbers run 1..expected. Items are stripped, not
    otherwise cleaned (see :func:`sanitize`).
    """
    runs: list[list[str]] = []
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if not m:
            continue
        number, item = int(m.group(1)), m.group(2).strip()
        if number == 1 or not runs:
            runs.append([])
        if number == len(runs[-1]) + 1:
            runs[-1].append(item)
    if expected is not None:
        for run in reversed(runs):
            if len(run) == expected:
                return run
        for line in text.splitlines():  # maybe the whole list on one line: "1. a 2. b"
            inline = _parse_inline(line, expected)
            if inline is not None:
                return inline
    return runs[-1] if runs else []


def _parse_inline(text: str, expected: int) -> list[str] | None:
    marks = [m for m in _INLINE.finditer(text)]
    for first in (i for i, m in enumerate(marks) if m.group(1) == "1"):
        chosen, want = [], 1
        for m in marks[first:]:
            if int(m.group(1)) == want:
                chosen.append(m)
                want += 1
            if want > expected:
                break
        if len(chosen) == expected:
            ends = [m.start() for m in chosen[1:]] + [len(text)]
            return [text[m.end():end].strip() for m, end in zip(chosen, ends)]
    return None


_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-_])")  # terminal colour/cursor sequences
_LINE_BREAKS = re.compile(r"[\t\n\r\v\f\x85\u2028\u2029]")


def sanitize(text: str, max_chars: int = 400) -> str:
    """Untrusted model text -> one clean line: terminal escapes and control/format characters
    removed, line breaks and runs of whitespace made one space, wrapping quotes and markdown
    emphasis stripped, capped at ``max_chars`` (cut at a word boundary)."""
    text = _LINE_BREAKS.sub(" ", _ANSI_ESCAPE.sub("", unicodedata.normalize("NFC", str(text))))
    # Control, format (zero-width, bidi overrides), surrogate and private-use characters go.
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co"))
    text = " ".join(text.split())
    text = re.sub(r"^(\*\*|__)(.*)\1$", r"\2", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    if len(text) > max_chars:
        cut = text[:max_chars]
        text = (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip()
    return text


def _clean_multiline(text: str, max_chars: int) -> str:
    """Like :func:`sanitize` but keeps line breaks (for echoing an answer back to the model)."""
    return "\n".join(sanitize(line, max_chars) for line in str(text).splitlines())[:max_chars]


# ---------------------------------------------------------------------------------------
# LLM memory: shared query / parse / validate / retry / cache / fallback
# ---------------------------------------------------------------------------------------
_CACHE_FORMAT = "ardiff-acdc-memory-v1"


class LLMMemory(Memory):
    """Rewrites the whole story with one LLM query (as the paper's memory module does); subclasses implement
    :meth:`complete` (chat messages -> the model's text) and :meth:`identity` (what the cache key
    must change with: the model, its decoding settings; never a secret).

    ``rewrite`` never raises for bad model output or a backend error: an answer that fails
    validation (not exactly N numbered lines, an empty line, a line over the token budget) gets
    one corrective retry; a second failure, or any exception from ``complete``, returns
    ``fallback.rewrite(prompts)`` (default :class:`RuleBasedMemory`) with a
    :class:`MemoryFallbackWarning` saying why.

    template: must contain ``{story}`` (numbered sentences) and may contain ``{n}``.
    tokenizer/max_tokens: the corrector's text-encoder budget (CLIP: 77), see :class:`TokenBudget`.
    cache_dir: also keep results as JSON files there (survives new instances and processes).
    strict_causal: the paper sends the whole story at once, so the model *may* let sentence i
    borrow from later ones; True sends one query per prefix (N queries) and keeps the last line
    of each, so prompt i provably depends on prompts 0..i only.
    """

    def __init__(self, template: str = REFINER_TEMPLATE, system_prompt: str | None = REFINER_SYSTEM,
                 tokenizer: Any = None, max_tokens: int = 77, cache_dir: str | os.PathLike | None = None,
                 fallback: Memory | None = None, max_chars: int = 400, strict_causal: bool = False):
        self.template = check_template(template)
        self.system_prompt = system_prompt
        self.budget = TokenBudget(tokenizer, max_tokens) if tokenizer is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.fallback = fallback if fallback is not None else RuleBasedMemory(tokenizer, max_tokens)
        self.max_chars = max_chars
        self.strict_causal = strict_causal
        self._cache: dict[str, list[str]] = {}
        self.calls = 0  # backend calls made (a cache hit makes none)
        self.expected_lines = 0  # a hint for backends: how many lines the current query asks for

    # -- what a backend provides ------------------------------------------------------
    @abstractmethod
    def complete(self, messages: list[Message]) -> str:
        """The model's answer to a chat; may raise on any backend failure."""

    @abstractmethod
    def identity(self) -> str:
        """A stable description of the backend for the cache key (never a secret)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity()})"

    # -- Memory -----------------------------------------------------------------------
    def rewrite(self, prompts: list[str]) -> list[str]:
        prompts = [str(p) for p in prompts]
        if not prompts:
            return []
        if not self.strict_causal:
            return self._rewrite_story(prompts)
        return [self._rewrite_story(prompts[:k])[k - 1] for k in range(1, len(prompts) + 1)]

    def messages(self, prompts: Sequence[str]) -> list[Message]:
        user = self.template.format(n=len(prompts), story=number_lines(prompts))
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": user}]

    def cache_key(self, prompts: Sequence[str]) -> str:
        payload = json.dumps([_CACHE_FORMAT, self.identity(), self.template, self.system_prompt,
                              self.budget.max_tokens if self.budget else None, self.max_chars, list(prompts)],
                             ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _rewrite_story(self, prompts: list[str]) -> list[str]:
        key = self.cache_key(prompts)
        cached = self._cache.get(key) or self._read_disk(key, len(prompts))
        if cached is not None:
            self._cache[key] = cached
            return list(cached)
        messages = self.messages(prompts)
        self.expected_lines = len(prompts)
        problem = ""
        for attempt in range(2):
            try:
                self.calls += 1
                answer = self.complete(messages)
            except Exception as e:  # any backend failure: the story must still be drawn
                return self._fall_back(prompts, f"the backend failed ({type(e).__name__}: {self._describe(e)})")
            if not isinstance(answer, str):
                return self._fall_back(prompts, f"the backend returned {type(answer).__name__}, not text")
            try:
                result, problem = self._validate(answer, prompts)
            except Exception as e:  # e.g. the budget tokenizer choking on odd text
                return self._fall_back(prompts, f"validating the answer failed ({type(e).__name__}: "
                                                f"{self._describe(e)})")
            if result is not None:
                self._cache[key] = result
                self._write_disk(key, prompts, result)
                return list(result)
            if attempt == 0:  # one corrective retry: tell the model what was wrong
                messages = [*messages, {"role": "assistant", "content": _clean_multiline(answer, 4000)},
                            {"role": "user", "content": f"That answer was invalid: {problem}. Answer again with "
                                                        f"exactly {len(prompts)} numbered lines, one per sentence, "
                                                        f"and nothing else."}]
        return self._fall_back(prompts, f"the model's answer was invalid twice (last: {problem})")

    def _describe(self, error: BaseException) -> str:
        return sanitize(str(error), 300)

    def _validate(self, answer: str, prompts: list[str]) -> tuple[list[str] | None, str]:
        n = len(prompts)
        lines = [sanitize(line, self.max_chars) for line in parse_numbered_lines(answer, expected=n)]
        if len(lines) != n:
            return None, f"expected {n} numbered lines, got {len(lines)}"
        empty = [i + 1 for i, line in enumerate(lines) if not line]
        if empty:
            return None, f"line(s) {empty} are empty"
        if self.budget is not None:
            over = [i + 1 for i, (line, original) in enumerate(zip(lines, prompts))
                    if not self.budget.fits(line, original)]
            if over:
                return None, f"line(s) {over} exceed the {self.budget.max_tokens}-token text-encoder budget"
        return lines, ""

    def _fall_back(self, prompts: list[str], reason: str) -> list[str]:
        warnings.warn(f"{type(self).__name__}: {reason}; using {type(self.fallback).__name__} instead",
                      MemoryFallbackWarning, stacklevel=4)
        return self.fallback.rewrite(prompts)

    # -- disk cache ---------------------------------------------------------------------
    def _read_disk(self, key: str, n: int) -> list[str] | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # missing or corrupt: recompute (and overwrite it)
        result = data.get("rewritten") if isinstance(data, dict) else None
        if isinstance(result, list) and len(result) == n and all(isinstance(s, str) and s for s in result):
            return [sanitize(s, self.max_chars) for s in result]
        return None

    def _write_disk(self, key: str, prompts: list[str], result: list[str]) -> None:
        if self.cache_dir is None:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            payload = {"format": _CACHE_FORMAT, "backend": self.identity(), "prompts": prompts, "rewritten": result}
            # Write a temporary file in the same directory and rename it: readers never see a half file.
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.cache_dir)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(payload, f, ensure_ascii=False, indent=1)
                os.replace(tmp, self.cache_dir / f"{key}.json")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:  # a cache that cannot be written must not lose the result
            warnings.warn(f"{type(self).__name__}: could not write the cache in {self.cache_dir}: {e}", stacklevel=4)


# ---------------------------------------------------------------------------------------
# Local transformers backend
# ---------------------------------------------------------------------------------------
