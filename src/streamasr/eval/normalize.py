"""Text normalization for WER: the Whisper English normalizer, as the Open ASR Leaderboard applies it.

Two flavours, both built on the `whisper-normalizer` package (a packaged copy of OpenAI Whisper's
`EnglishTextNormalizer`; we reuse its number and spelling normalizers and its rule sequence):

- ``leaderboard`` (default): the normalizer of the Open ASR Leaderboard's `normalizer/` package as the
  leaderboard scored English sets in 2025 (the methodology of the Nemotron Speech Streaming paper). It is
  Whisper's normalizer from before four informal contractions were added (kinda, sorta, dunno, cause are *not*
  expanded) with the leaderboard's corrections to the British->American spelling list (which has a few
  inverted or broken entries in Whisper's copy, e.g. "cancelation" -> "cancellation" and
  "archaeology" -> "archeology</span>").
- ``whisper``: `whisper_normalizer.english.EnglishTextNormalizer` unchanged.
- ``basic``: Whisper's `BasicTextNormalizer` for other languages (lower case, bracketed text dropped,
  punctuation and symbols to spaces), with Unicode marks kept: Whisper's default turns the vowel signs and
  viramas of Indic and Thai script into spaces, which splits words.

English normalizers apply only to English: `normalizer_for` scores an utterance in any other language with
``basic`` whatever `--normalizer` says (numbers and spellings of another language are not English ones).

Not reproduced: the leaderboard's 2026 additions (acronym joining "u.s.a." -> "usa", ellipsis handling,
first-name variants, compound joining and kaldialign's compound merging), which postdate the paper.
"""

from __future__ import annotations

from functools import lru_cache

from streamasr.errors import StreamASRError
from streamasr.eval.languages import is_english

NORMALIZERS = ("leaderboard", "whisper", "basic")

# Informal contractions that newer Whisper versions expand but the leaderboard's normalizer does not.
_NOT_IN_LEADERBOARD = (r"\bkinda\b", r"\bsorta\b", r"\bdunno\b", r"\bcause\b")

# The leaderboard's British->American spelling list differs from the whisper-normalizer copy in these entries
# (None: the leaderboard has no entry for the word).
_LEADERBOARD_SPELLINGS: dict[str, str | None] = {
    "archaeological": "archeological",
    "archaeology": "archeology",
    "archeological": None,
    "cancelation": None,
    "cancelations": None,
    "cancellation": "cancelation",
    "cancellations": "cancelations",
    "mm": "hmm",
    "pummelled": "pummeled",
    "pummelling": "pummeling",
    "snowploughs": "snowplows",
    "travelog": None,
    "travelogs": None,
    "travelogue": "travelog",
    "travelogues": "travelogs",
}

# References the leaderboard drops before scoring (after normalization).
IGNORED_REFERENCES = ("", "ignore time segment in scoring")


@lru_cache(maxsize=None)
def get_normalizer(name: str = "leaderboard"):
    """A callable str -> str for `name` (one of NORMALIZERS)."""
    if name not in NORMALIZERS:
        raise StreamASRError(f"unknown normalizer {name!r}; choose one of: {', '.join(NORMALIZERS)}")
    try:
        from whisper_normalizer.basic import BasicTextNormalizer
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise StreamASRError("the WER benchmark needs the `whisper-normalizer` package: "
                             "pip install 'streamasr[bench]'") from exc
    if name == "basic":
        return BasicTextNormalizer(preserve_marks=True)
    norm = EnglishTextNormalizer()
    if name == "leaderboard":
        for pattern in _NOT_IN_LEADERBOARD:
            norm.replacers.pop(pattern, None)
        mapping = dict(norm.standardize_spellings.mapping)
        for word, american in _LEADERBOARD_SPELLINGS.items():
            if american is None:
                mapping.pop(word, None)
            else:
                mapping[word] = american
        norm.standardize_spellings.mapping = mapping
    return norm


def normalizer_for(language: str | None, name: str = "leaderboard") -> str:
    """The normalizer an utterance in `language` is scored with: `name` for English (or no language given),
    ``basic`` for every other language."""
    return name if is_english(language) else "basic"


def normalize(text: str, name: str = "leaderboard") -> str:
    """Normalized text with surrounding whitespace removed (words are what WER counts)."""
    return get_normalizer(name)(text or "").strip()


def is_scored_reference(normalized_ref: str) -> bool:
    """False for references the leaderboard excludes (empty after normalization, or a scoring marker)."""
    return normalized_ref.strip() not in IGNORED_REFERENCES
