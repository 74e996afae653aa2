"""leyolo: efficient real-time object detection for CPUs and small devices.

>>> from leyolo import load
>>> detector = load("LeYOLONano.pt")          # or "leyolo-n", "model.safetensors", "model.onnx"
>>> results = detector.predict("bus.jpg")
"""

from .api import Detector, convert, load, train
from .errors import LeyoloError, UnsafeCheckpointError
from .models.registry import create_model, list_models
from .structures import Results

__all__ = ["Detector", "LeyoloError", "Results", "UnsafeCheckpointError", "convert", "create_model", "list_models",
           "load", "train"]
__version__ = "0.1.0"
