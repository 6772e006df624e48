"""LinCIR's keyword spans: a caption's keywords become ``*``, the slot the caption's own pseudo-word fills.

LinCIR tags the caption with spaCy (``en_core_web_sm``) and replaces every maximal run of consecutive tokens whose
part of speech is NOUN, PROPN, ADJ or DET with its slot symbol; a caption without such a run gets one random word
replaced. p2w does the same with spaCy when spaCy and that model are importable (``pip install 'p2w[spacy]'``
and ``python -m spacy download en_core_web_sm``), and otherwise with a rule that needs no model
(``STOPWORD_RULE``): words are split on whitespace and punctuation (a hyphen or apostrophe inside a word keeps it
whole: ``t-shirt``, ``man's``); a word in ``FUNCTION_WORDS`` (prepositions, conjunctions, pronouns, auxiliaries,
common verbs and adverbs, numbers) or ending in ``-ing`` (6 letters or more, not in ``ING_NOUNS``) breaks a run, as
does punctuation; maximal runs of the other words (nouns, adjectives, determiners and names, as far as the list
knows) become ``*``. Where they differ: spaCy tags words by context (``that`` as a determiner or a pronoun, a verb
it has never seen, ``-ed`` participles), splits ``man's`` and ``t-shirt``, and the rule keeps determiners inside a
run but never tags an unknown verb as one. The fallback word is chosen by a generator seeded with the run's seed
and the caption, so the same caption gets the same replacement on every run and rank.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SPACY_MODEL = "en_core_web_sm"
SPACY_TAGS = frozenset({"NOUN", "PROPN", "ADJ", "DET"})
STOPWORD_RULE = "rule: p2w stop-words"
STAR = "*"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


FUNCTION_WORDS = _words(
    """
    about above across after against along alongside amid among around as at atop before behind below beneath beside
    besides between beyond by despite down during except for from in inside into like near next of off on onto out
    outside over past per since through throughout till to toward towards under underneath unlike until up upon via
    with within without
    and or but nor so yet if because while whereas although though than that which who whom whose where when whether
    how why what
    i me my mine myself you your yours yourself he him his himself she her hers herself it its itself we us our ours
    ourselves they them their theirs themselves someone somebody something everyone everybody everything anyone
    anybody anything nobody nothing one ones
    am is are was were be been being has have had having do does did done can could will would shall should may
    might must isn aren wasn weren don doesn didn won can't don't doesn't isn't aren't it's there's that's
    not very too also just only really quite here there now then away together almost nearly still even again
    always often maybe well back ever
    sit sits sat stand stands stood walk walks walked ride rides rode hold holds held wear wears wore worn look looks
    looked lie lies lay lays laid play plays played run runs ran eat eats ate eaten fly flies flew show shows showed
    shown make makes made take takes took taken get gets got go goes went gone come comes came use uses used see sees
    saw seen pose poses posed watch watches watched carry carries carried throw throws threw hang hangs hung park
    parked cover covers covered fill fills filled dressed placed put set sets leaning surrounded topped stacked lined
    decorated attached perched wait waits waited smile smiles smiled talk talks talked drink drinks drank cook cooks
    cooked read reads write writes wrote written work works worked drive drives drove driven pull pulls pulled push
    pushes pushed sleep sleeps slept rest rests rested contains contain located featuring displayed
    two three four five six seven eight nine ten eleven twelve twenty thirty hundred thousand dozen
    """
)
# words ending in -ing that are nouns (or noun modifiers) in captions: they do not break a run
ING_NOUNS = _words(
    """
    building buildings clothing painting paintings ceiling evening morning wedding string spring sibling pudding
    icing frosting railing parking living dining stuffing toppings awning lighting bedding drawing drawings outing
    wiring siding
    """
)
_TOKEN = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
_SPACES = re.compile(r"\s+")
_STAR_RUN = re.compile(r"\s*\*\s*")


def clean(caption: str) -> str:
    """LinCIR's cleaning: lower case, no slot symbol (``*`` here), single spaces, stripped."""
    return _SPACES.sub(" ", caption.lower().replace(STAR, " ")).strip()


def spaced(text: str) -> str:
    """``*`` as a token of its own (CLIP's BPE merges it with neighbouring punctuation)."""
    return _SPACES.sub(" ", _STAR_RUN.sub(" * ", text)).strip()


@dataclass(frozen=True)
class Span:
    """A token of a caption: where it is, and whether it may be part of a keyword run."""

    start: int
    end: int
    keyword: bool
    word: bool  # a word (not punctuation): a candidate for the fallback


def is_keyword_word(word: str) -> bool:
    """The rule's test for one (lower-case) word: not a function word, a number or an ``-ing`` verb."""
    if word in FUNCTION_WORDS or word.replace(",", "").replace(".", "").isdigit():
        return False
    return not (word.endswith("ing") and len(word) >= 6 and word not in ING_NOUNS)


def rule_spans(caption: str) -> list[Span]:
    """The stop-word rule's tokens of a cleaned caption."""
    out = []
    for m in _TOKEN.finditer(caption):
        word = m.group()[0].isalnum() or m.group()[0] == "_"
        out.append(Span(m.start(), m.end(), word and is_keyword_word(m.group()), word))
    return out


def replace_runs(caption: str, spans: Sequence[Span], seed: int) -> str:
    """Every maximal run of keyword spans becomes one ``*``; with none, one seeded random word does."""
    marks = [s.keyword for s in spans]
    if not any(marks):
        words = [i for i, s in enumerate(spans) if s.word]
        if not words:
            return ""
        marks[_fallback(caption, seed).choice(words)] = True
    out, pos, i = [], 0, 0
    while i < len(spans):
        if not marks[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(spans) and marks[j + 1]:
            j += 1
        out += [caption[pos : spans[i].start], f" {STAR} "]
        pos, i = spans[j].end, j + 1
    out.append(caption[pos:])
    return spaced("".join(out))


def _fallback(caption: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{caption}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


@dataclass(frozen=True)
class KeywordRule:
    """Turns cleaned captions into replaced ones; ``name`` is what training logs and mapper metadata record."""

    name: str
    key: str  # a short id for cache keys, e.g. "stopwords-1"
    spans: Callable[[Sequence[str]], list[list[Span]]]

    def replace(self, captions: Sequence[str], seed: int) -> list[str]:
        """The replaced captions (``""`` where a caption has no word at all)."""
        return [replace_runs(c, s, seed) for c, s in zip(captions, self.spans(captions), strict=True)]


def stopword_rule() -> KeywordRule:
    """The rule that needs no model."""
    return KeywordRule(STOPWORD_RULE, "stopwords-1", lambda captions: [rule_spans(c) for c in captions])


def spacy_rule() -> KeywordRule | None:
    """LinCIR's spaCy tagging, when spaCy and ``en_core_web_sm`` can be loaded; None otherwise."""
    try:
        import spacy

        nlp = spacy.load(SPACY_MODEL, disable=["parser", "ner", "lemmatizer"])
    except Exception:  # not installed, no model, or an incompatible one: the rule is used instead
        return None

    def spans(captions: Sequence[str]) -> list[list[Span]]:
        return [
            [Span(t.idx, t.idx + len(t.text), t.pos_ in SPACY_TAGS, not (t.is_punct or t.is_space)) for t in doc]
            for doc in nlp.pipe(captions, batch_size=256)
        ]

    return KeywordRule(f"spacy {SPACY_MODEL}", f"spacy-{SPACY_MODEL}-{spacy.__version__}", spans)


def keyword_rule(prefer: str = "auto") -> KeywordRule:
    """``auto``: spaCy when it loads, else the stop-word rule; ``rule``: always the stop-word rule."""
    if prefer == "rule":
        return stopword_rule()
    return spacy_rule() or stopword_rule()
