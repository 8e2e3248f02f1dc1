"""Inference at run time (onnxruntime + numpy only): the `Model` and its `Stream`s, many streams' encoder
steps batched in one call (`decode_streams`), and endpointing into finals (`Endpointer`)."""

from streamasr.runtime.batch import decode_streams, encode_batch, warm_up
from streamasr.runtime.endpoint import EndpointConfig, Endpointer, Final
from streamasr.runtime.stream import Model, Result, Stream

__all__ = ["Model", "Result", "Stream", "decode_streams", "encode_batch", "warm_up", "EndpointConfig", "Endpointer",
           "Final"]
