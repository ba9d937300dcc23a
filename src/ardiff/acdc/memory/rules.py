"""Rule-based memory: the first sentence's subject carried into later references (no model)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ardiff.acdc.base import Memory


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
    "glide": ("glides",), "slide": ("slides", "slid"), "drift": ("drifts",), "bounce": ("bounces",),
    "hop": ("hops",), "roll": ("rolls",), "spin": ("spins", "spun"), "float": ("floats",), "move": ("moves",),
    "rest": ("rests",), "slow": ("slows",), "stop": ("stops",), "fall": ("falls", "fell"), "rise": ("rises", "rose"),
    "dance": ("dances",), "shine": ("shines", "shone"), "glow": ("glows",), "sink": ("sinks", "sank"),
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
    setting: str | None = None  # a place carried with the subject ("on the teal floor"), see find_setting


def _words(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text))


def _is_name(word: str) -> bool:
    return word[:1].isupper() and word.lower() not in _NOT_NAMES


def _tails(words: Sequence[str]) -> list[str]:
    """["old", "lighthouse", "keeper"] -> ["old lighthouse keeper", "lighthouse keeper", "keeper"]."""
    return [" ".join(words[i:]).lower() for i in range(len(words))]


def _noun_phrase(words: list[str], start: int, max_len: int = 5) -> list[str]:
    """The words of the noun phrase starting at ``start``, up to the first verb-like or stop word.

    A regular past ("-ed") ends the phrase unless it is the phrase's first word ("the tired dog");
    so does a third-person "-s" after a singular noun ("a sneaker glides": "sneaker", not
    "sneaker glides"; "glass slippers" keeps both), unless it ends the phrase before punctuation
    ("a white trousers," keeps both)."""
    out: list[str] = []
    for k, word in enumerate(words[start:start + max_len], start):
        low = word.lower()
        if low in _SUBJECT_STOP or low in _VERBS or (out and len(low) > 4 and low.endswith("ed")):
            break
        if out and len(low) > 3 and low.endswith("s") and not low.endswith("ss") \
                and not out[-1].lower().endswith("s") and k + 1 < len(words):  # last word: "white trousers"
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
    # "Meet Nova, ..." / "This is Nova, ...": an introduction, not part of the subject.
    text = re.sub(r"^(?:meet|this is|here is)\s+(?=[A-Z])", "", text, flags=re.IGNORECASE)
    # "At the top of a floor sits Nova, a yellow sneaker.": the subject follows the verb.
    inverted = _inverted_subject(text)
    if inverted is not None:
        return inverted
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
    elif after_name == len(words):  # "Nova, the yellow sneaker, ...": an appositive after a comma
        return _named_subject(name, _appositive(text[text.index(name) + len(name):]), [])
    verb_index = after_name + (len(description) + 1 if description else 0)
    predicate = _predicate_noun(words, verb_index)
    if not description and predicate:  # "Mia was a young girl" -> "Mia the young girl"
        description, predicate = predicate, []
    return _named_subject(name, description, predicate)


def _named_subject(name: str, description: list[str], predicate: list[str]) -> StorySubject:
    referent = f"{name} the {' '.join(description)}" if description else name
    aliases = _tails(description) + [a for a in _tails(predicate) if a not in _tails(description)]
    # "the yellow one": an adjective of the description with "one" refers to the subject too.
    aliases += [f"{w.lower()} one" for w in description[:-1]]
    return StorySubject(referent, name, " ".join(description).lower(),
                        tuple(sorted(aliases, key=len, reverse=True)), plural=False)


def _appositive(rest: str) -> list[str]:
    """", the small yellow sneaker, rests ..." -> ["small", "yellow", "sneaker"] ([] if none)."""
    m = re.match(r"\s*,\s*(?:the|a|an)\s+", rest, flags=re.IGNORECASE)
    return _noun_phrase(_leading_words(rest[m.end():]), 0) if m else []


def _inverted_subject(text: str) -> StorySubject | None:
    """"<place phrase> sits|lives|... Name, a <description>." -> Name the <description>."""
    first = _words(text)
    if not first or first[0].group().lower() not in _LEADING_PREPOSITIONS or "," not in text:
        return None
    head = text[: text.index(",")]
    words = [m.group() for m in _words(head)]
    verbs = [i for i, w in enumerate(words) if w.lower() in _VERBS | {"lived", "sat"}]
    if not verbs or verbs[-1] + 1 >= len(words) or not all(_is_name(w) for w in words[verbs[-1] + 1:]):
        return None
    name = " ".join(words[verbs[-1] + 1:])
    return _named_subject(name, _appositive(text[len(head):]), [])


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
         tiny robot called Bolt" -> "Bolt the tiny robot");
       * an appositive after a name: "Nova, the yellow sneaker, rests ..." and "Meet Nova, a
         yellow sneaker ..." -> "Nova the yellow sneaker";
       * an inverted subject after a place phrase: "At the top of a teal floor sits Nova, a
         yellow sneaker." -> "Nova the yellow sneaker".

       The description runs up to 5 words and stops at a verb (a built-in list, or a word ending
       in "-ed" that is not the description's first word), a preposition, conjunction, relative
       pronoun, adverb, or punctuation. A bare name with a predicate nominal takes it as the
       description: "Mia was a young girl ..." -> "Mia the young girl". A sentence 0 that starts
       with anything else (a pronoun, "It was raining") has no subject: every prompt is kept.

    2. **Aliases**: the tails of the description ("old lighthouse keeper", "lighthouse keeper",
       "keeper"), the description's adjectives with "one" ("the yellow one"), and the tails of
       the predicate nominal of sentence 0 ("Benny the beagle was a curious puppy" ->
       "curious puppy", "puppy").

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

    5. With ``carry_setting=True`` the place of sentence 0 travels with the subject (see
       :func:`find_setting`): "It hops to the left." -> "Nova the yellow sneaker on the teal
       floor hops to the left." Off by default: not every story's first place stays relevant.

    4. With ``expand_bare_names=True`` a named subject's bare name is expanded too: "Nova slides
       right." -> "Nova the yellow sneaker slides right." (off by default: the paper's refiner
       keeps sentences that already name their referent).

    Only the first sentence's subject is tracked: a story whose second character is introduced
    later may see a pronoun resolved to the wrong one. ``tokenizer``/``max_tokens``: when given,
    a rewrite that would exceed the text encoder's budget keeps the original sentence.
    """

    def __init__(self, tokenizer: Any = None, max_tokens: int = 77, expand_bare_names: bool = False,
                 carry_setting: bool = False):
        self.budget = TokenBudget(tokenizer, max_tokens) if tokenizer is not None else None
        self.expand_bare_names = expand_bare_names
        self.carry_setting = carry_setting

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget.max_tokens if self.budget else None})"

    def rewrite(self, prompts: list[str]) -> list[str]:
        prompts = [str(p) for p in prompts]
        if not prompts:
            return []
        subject = find_story_subject(prompts[0])
        if subject is None:
            return list(prompts)
        if self.carry_setting:
            setting = find_setting(prompts[0], subject)
            if setting:  # "Nova the yellow sneaker" -> "Nova the yellow sneaker on the teal floor"
                subject = dataclasses.replace(subject, setting=setting)
        out = [prompts[0]]
        for sentence in prompts[1:]:
            new = self.rewrite_sentence(sentence, subject, self.expand_bare_names)
            if self.budget is not None and not self.budget.fits(new, sentence):
                new = sentence
            out.append(new)
        return out

    @staticmethod
    def rewrite_sentence(sentence: str, subject: StorySubject, expand_bare_names: bool = False) -> str:
        if _names_subject(sentence, subject):
            if expand_bare_names and subject.description and subject.referent not in sentence:
                # "Nova slides right." -> "Nova the yellow sneaker slides right."
                return re.sub(rf"\b{re.escape(subject.name)}\b", _with_setting(subject), sentence, count=1)
            return sentence
        found = _earliest_reference(sentence, subject)
        if found is None:
            return sentence
        start, end, replacement = found
        if start == len(sentence) - len(sentence.lstrip()):
            replacement = replacement[:1].upper() + replacement[1:]
        return sentence[:start] + replacement + sentence[end:]


_PLACE_PHRASE = re.compile(r"\b(?=(on|in|inside|at|of|under|near|by)\s+(?:a|an|the)\s+([a-z]+(?:\s+[a-z]+){0,2})\b)")
_POSITION_NOUNS = {"top", "bottom", "left", "right", "centre", "center", "middle", "corner", "side", "edge", "front",
                   "back", "end", "start", "time", "day", "morning", "evening", "night"}


def find_setting(sentence: str, subject: StorySubject) -> str | None:
    """The place of sentence 0 as a phrase to carry: "... at the top left of a teal floor." ->
    "on the teal floor". The last "<preposition> a|the <up to 3 words>" phrase whose words are
    not a position ("the top left") nor the subject's description; "of" becomes "on"."""
    description = set(subject.description.split())
    found = None
    for m in _PLACE_PHRASE.finditer(sentence.lower()):
        words = m.group(2).split()
        # cut the phrase at a word that starts a new clause or phrase
        for k, w in enumerate(words):
            if w in _SUBJECT_STOP or w in _VERBS:
                words = words[:k]
                break
        if not words or words[-1] in _POSITION_NOUNS or set(words) <= description:
            continue
        preposition = "on" if m.group(1) == "of" else m.group(1)
        found = f"{preposition} the {' '.join(words)}"
    return found


def _names_subject(sentence: str, subject: StorySubject) -> bool:
    """A named subject is named by its name ("Benny", not "the beagle"); an unnamed one by its
    full description ("an old lighthouse keeper", not "the keeper")."""
    if subject.name:
        return re.search(rf"\b{re.escape(subject.name)}\b", sentence) is not None
    return re.search(rf"\b{re.escape(subject.description)}\b", sentence, re.IGNORECASE) is not None


def _with_setting(subject: StorySubject) -> str:
    return f"{subject.referent} {subject.setting}" if subject.setting else subject.referent


def _earliest_reference(sentence: str, subject: StorySubject) -> tuple[int, int, str] | None:
    subject_pronouns = _SUBJECT_PRONOUNS_PLURAL if subject.plural else _SUBJECT_PRONOUNS_SINGULAR
    possessives = _POSSESSIVES_PLURAL if subject.plural else _POSSESSIVES_SINGULAR
    clause_starts = _clause_starts(sentence)
    candidates: list[tuple[int, int, str]] = []
    words = _words(sentence)
    for i, m in enumerate(words):
        low = m.group().lower()
        if low in subject_pronouns:
            candidates.append((m.start(), m.end(), _with_setting(subject)))
        elif m.start() in clause_starts and low in possessives:
            candidates.append((m.start(), m.end(), _possessive(subject.referent, subject.plural)))
        elif m.start() in clause_starts and low == "it" and not subject.plural:
            follower = words[i + 1].group().lower() if i + 1 < len(words) else ""
            if follower not in _EXPLETIVE_FOLLOWERS and not sentence[m.end():].startswith("'s"):
                candidates.append((m.start(), m.end(), _with_setting(subject)))
        if candidates:
            break  # words are in order: the first hit is the earliest pronoun
    for alias in subject.aliases:  # longest first, so "the lighthouse keeper" beats "the keeper"
        m = re.search(rf"\bthe\s+{re.escape(alias)}\b(?!-)", sentence, re.IGNORECASE)
        if m:
            candidates.append((m.start(), m.end(), _with_setting(subject)))
            break
    return min(candidates, key=lambda c: c[0]) if candidates else None


# ---------------------------------------------------------------------------------------
# The refiner prompt and its parser
# ---------------------------------------------------------------------------------------
