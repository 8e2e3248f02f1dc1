"""Languages in evaluation: which prompt of a model a dataset's locale means, and how a language is scored.

Datasets name locales their own way (FLEURS configs `de_de`, `cmn_hans_cn`, `es_419`; manifests anything a
user writes), while a prompt model's `languages` map its own keys (`de-DE`, `de`, `zh-CN`, `auto`, ...) to
prompt slots. `resolve_prompt` maps one onto the other: the key itself, the same locale spelled with `_` or
another case, a known FLEURS name, the bare language (`ar_eg` -> `ar`), or the one slot of that language.
A locale it cannot place is an error listing the model's keys, never a silent fallback to another language.

Scoring: ja, zh (and cmn, yue), ko and th are scored by character error rate, since their text is not
written (ja, zh, th) or not consistently segmented (ko, and FLEURS references of all four) into words.
"""

from __future__ import annotations

import re

from streamasr.errors import StreamASRError

#: languages scored by character error rate (base subtags, lower case)
CER_LANGUAGES = frozenset({"ja", "zh", "cmn", "yue", "ko", "th"})

#: FLEURS config names whose model key is not the same locale respelled
FLEURS_ALIASES = {"cmn_hans_cn": "zh-CN"}

AUTO = "auto"


def base_language(locale: str | None) -> str | None:
    """`de` for de-DE / de_de / DE; None for None."""
    if not locale:
        return None
    return re.split(r"[-_]", locale.strip(), maxsplit=1)[0].lower()


def display_locale(locale: str | None) -> str | None:
    """A dataset's locale spelled as a BCP 47 tag: de_de -> de-DE, cmn_hans_cn -> cmn-Hans-CN, es_419 -> es-419."""
    if not locale:
        return None
    parts = [p for p in re.split(r"[-_]", locale.strip()) if p]
    out = [parts[0].lower()]
    for p in parts[1:]:
        out.append(p.title() if len(p) == 4 and p.isalpha() else p.upper() if len(p) == 2 else p)
    return "-".join(out)


def metric_for(language: str | None) -> str:
    """"cer" for the languages scored by character, else "wer" (also for an unknown language)."""
    return "cer" if base_language(language) in CER_LANGUAGES else "wer"


def is_english(language: str | None) -> bool:
    return base_language(language) in (None, "en")


def resolve_prompt(requested: str, languages: dict) -> str | None:
    """The key of `languages` (prompt key -> slot) that `requested` names, or None if none does."""
    if requested in languages:
        return requested
    by_folded = {_fold(k): k for k in languages}
    folded = _fold(requested)
    if folded in by_folded:
        return by_folded[folded]
    alias = FLEURS_ALIASES.get(requested.lower().replace("-", "_"))
    if alias and alias in languages:
        return alias
    base = base_language(requested)
    if base in by_folded:
        return by_folded[base]
    slots = {}
    for key, slot in languages.items():
        if base_language(key) == base and key != AUTO:
            slots.setdefault(slot, key)
    if len(slots) == 1:
        return next(iter(slots.values()))
    return None


def prompt_for(requested: str | None, languages: dict, model_label: str, where: str = "") -> str | None:
    """The prompt key to transcribe with, for an utterance in language `requested` (None: the model's default).

    A model without prompts (`languages` empty) transcribes English only: English or no language gives None;
    any other language is an error. A prompt model must know the locale. `where` (a manifest line, an option)
    starts the error message.
    """
    prefix = f"{where}: " if where else ""
    if requested is None:
        return None
    if not languages:
        if is_english(requested) and requested != AUTO:
            return None
        raise StreamASRError(f"{prefix}language {requested!r}: model {model_label} has no language prompt "
                             "(it transcribes English only)")
    key = resolve_prompt(requested, languages)
    if key is None:
        raise StreamASRError(f"{prefix}language {requested!r} is not one of model {model_label}'s languages "
                             f"({', '.join(sorted(languages))})")
    return key


def same_language(a: str | None, b: str | None) -> bool:
    """Whether two locales are the same language (base subtags; FLEURS's cmn counts as zh)."""
    def norm(x):
        b_ = base_language(x)
        return "zh" if b_ == "cmn" else b_

    return a is not None and b is not None and norm(a) == norm(b)


def _fold(locale: str) -> str:
    return locale.strip().lower().replace("_", "-")
