"""leyolo: efficient real-time object detection for CPUs and small devices.

>>> from leyolo import load
>>> detector = load("LeYOLONano.pt")          # or "leyolo-n", "model.safetensors", "model.onnx"
>>> results = detector.predict("bus.jpg")
"""

from .api import Detector, convert, load
from .errors import LeyoloError, UnsafeCheckpointError
from .registry import create_model, list_models
from .structures import Results


def train(model="leyolo-n", data="", **overrides):
    """Train from scratch (model name), fine-tune (weights file) or resume (``resume=run_dir``).

    See ``leyolo.engine.trainer.train``; keyword arguments are ``TrainConfig`` fields.
    """
    from .engine.trainer import train as _train

    return _train(model, data, **overrides)

__all__ = ["Detector", "LeyoloError", "Results", "UnsafeCheckpointError", "convert", "create_model", "list_models",
           "load", "train"]
__version__ = "0.1.0"
