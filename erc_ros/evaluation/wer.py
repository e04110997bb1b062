"""Word error rate, the one implementation every benchmark and evaluation calls: text
normalization (numbers, symbols, notes, contractions, spellings), which prompts a WER run
excludes, and corpus-level WER over reference/hypothesis pairs."""
from __future__ import annotations

import math
import re
from typing import Optional


#: Cardinals, ordinals and their spoken stand-ins: a transcript holding one is excluded.
NUMBER_WORDS = frozenset("""
zero oh one two three four five six seven eight nine ten eleven twelve thirteen fourteen
fifteen sixteen seventeen eighteen nineteen twenty thirty forty fourty fifty sixty seventy
eighty ninety hundred thousand million billion niner first second third fourth fifth sixth
seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth fifteenth sixteenth
seventeenth eighteenth nineteenth twentieth thirtieth fortieth fourtieth fiftieth sixtieth
seventieth eightieth ninetieth hundredth thousandth millionth billionth
""".split())


#: Digits and symbols (ordinary punctuation . , ; : ! ? ' " - ( ) is not a symbol).
SYMBOLS = re.compile(r"[0-9#*@$%&+=/\\<>\[\]{}|^_~`]")


#: A bracketed note describing the audio rather than words: "[beep]", "<beep ascending>",
#: "(10 seconds of silence)".
NOTE = re.compile(r"[\[<(][^\])>]*[\])>]")


#: Contractions expanded, both sides (the rules of Whisper's English text normaliser, in
#: order): "I'm" = "I am", "that's" = "that is", "can't" = "cannot".
CONTRACTIONS = ((r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"),
                (r"\blet's\b", "let us"), (r"n't\b", " not"), (r"'re\b", " are"),
                (r"'s\b", " is"), (r"'d\b", " would"), (r"'ll\b", " will"),
                (r"'ve\b", " have"), (r"'m\b", " am"))


#: Spelling variants written either way (applied to normalised text, both sides).
SPELLINGS = {"okay": "ok", "can not": "cannot"}


def exclusion(name: str, text: str) -> Optional[str]:
    """Why a prompt is left out of the WER (None: kept). The rule, in order:
    ``letters/`` prompts (single letters, symbol names) -> "letters"; a bracketed note ->
    "note"; a digit or symbol -> "digits_symbols"; a number word -> "number_words";
    nothing left after normalisation -> "empty"."""
    if name.startswith("letters/"):
        return "letters"
    if NOTE.search(text):
        return "note"
    if SYMBOLS.search(text):
        return "digits_symbols"
    words = normalize(text).split()
    if any(w in NUMBER_WORDS for w in words):
        return "number_words"
    if not words:
        return "empty"
    return None


def normalize(text: str, hyphens: str = "split") -> str:
    """Text as the WER compares it: lower case; curly quotes straightened; contractions
    expanded (:data:`CONTRACTIONS`); periods and other apostrophes deleted ("A.M." = "am",
    "o'clock" = "oclock");
    hyphens split words ("call-forward" = "call forward") or, ``hyphens="join"``, join them
    ("de-activated" = "deactivated"); every other punctuation mark separates words; a few
    spelling variants unified (:data:`SPELLINGS`); single spaces."""
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    for a, b in CONTRACTIONS:
        t = re.sub(a, b, t)
    t = re.sub(r"[.']", "", t)
    if hyphens == "join":
        t = re.sub(r"(?<=\w)-(?=\w)", "", t)
    t = " ".join(re.sub(r"[^\w\s]|_", " ", t).split())
    for a, b in SPELLINGS.items():
        t = re.sub(rf"\b{a}\b", b, t)
    return t


def _edits(ref: str, hyp: str) -> tuple[int, int, int, int]:
    """(substitutions, deletions, insertions, reference words) of two normalised texts."""
    import jiwer  # not in requirements-robot.txt: eval-bag on a robot scores without WER

    if not ref:
        return 0, 0, len(hyp.split()), 0
    o = jiwer.process_words(ref, hyp)
    return o.substitutions, o.deletions, o.insertions, len(ref.split())


def word_errors(refs: list[str], hyps: list[str]) -> dict:
    """Corpus-level WER: total edits / total reference words, after :func:`normalize`.
    Where either text of a pair has a hyphen, the pair is scored with hyphens splitting
    and joining words, and the fewer edits count: a compound may be written joined,
    hyphenated or apart ("de-activated" / "deactivated", "call-forward" / "call forward")."""
    sub = dele = ins = n = 0
    for r, h in zip(refs, hyps):
        e = _edits(normalize(r), normalize(h))
        if "-" in r or "-" in h:
            j = _edits(normalize(r, "join"), normalize(h, "join"))
            if sum(j[:3]) < sum(e[:3]):
                e = j
        sub, dele, ins, n = sub + e[0], dele + e[1], ins + e[2], n + e[3]
    return {"wer": (sub + dele + ins) / n if n else math.nan, "words": n,
            "substitutions": sub, "deletions": dele, "insertions": ins}
