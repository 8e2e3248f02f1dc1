"""The language a client names, as the model's own language key.

Clients of the OpenAI and Wyoming protocols name languages their own way (ISO 639-1 `de`, `de_DE`, `DE-de`), and
clients written for English-only servers send `en` to any server. A multilingual model's prompt dictionary has
locale keys (`de-DE`) and short aliases (`de`); an English model has none and accepts English only.
"""

from __future__ import annotations

from streamasr.errors import ModelError
from streamasr.runtime.stream import Model

#: what an English-only model accepts from a client (the base code of `en`, `en-US`, `en_GB`)
ENGLISH = "en"


def client_language(model: Model, code: str | None) -> str | None:
    """The model's key for a client's language code (None: the model's default; for an English model, None
    for any English code), or a ModelError listing what the model offers."""
    if code is None or not str(code).strip():
        return model.default_language
    text = str(code).strip().replace("_", "-")
    languages = model.languages
    if not languages:
        if text.split("-")[0].lower() == ENGLISH:
            return None
        raise ModelError(f"language {code!r} is not supported: this model transcribes English ({ENGLISH!r})")
    if text in languages:
        return text
    folded = {key.lower(): key for key in languages}
    for candidate in (text.lower(), text.split("-")[0].lower()):
        if candidate in folded:
            return folded[candidate]
    raise ModelError(f"language {code!r} is not one of this model's: {', '.join(languages)}")


def reported_language(model: Model, language: str | None) -> str:
    """The language code a protocol reports back (OpenAI's `language`, Wyoming's transcript): the model's key
    for a multilingual model, `en` for an English one."""
    return language or ENGLISH
