"""Errors that mean "the user gave us something wrong", as opposed to bugs.

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class StreamASRError(Exception):
    """A problem with user input (audio, model, options) that deserves a clear one-line message."""


class AudioError(StreamASRError):
    """Audio that cannot be read or used (missing, corrupt, empty, wrong format)."""


class ModelError(StreamASRError):
    """A model source or model directory that cannot be used."""


class OfflineError(ModelError):
    """The Hugging Face hub cannot be reached and nothing usable is cached locally."""
