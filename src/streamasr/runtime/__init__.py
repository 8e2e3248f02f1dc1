"""Inference at run time: ONNX Runtime sessions, the encoder step, greedy RNN-T and the Stream API."""

from .stream import Model, Result, Stream

__all__ = ["Model", "Result", "Stream"]
