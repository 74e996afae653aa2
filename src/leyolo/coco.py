"""COCO's 80 detection classes and their category ids (the 91-id numbering of the annotation files).

Detections written as COCO json carry category ids, not class indices: a model with COCO's 80
classes writes COCO's ids (person = 1, ..., toothbrush = 90), any other model writes
``class index + 1``, which is what ``leyolo val`` uses for datasets labelled in YOLO txt. So
``predict --save-json`` and ``val --json`` agree, and either file scores with pycocotools.
"""

from __future__ import annotations

from typing import Sequence

COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip

# COCO 2017 category ids of the 80 classes above, in the same order (ids 12, 26, 29, 30, 45, 66, 68, 69,
# 71 and 83 are unused by the detection task).
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]  # fmt: skip


def category_ids(names: Sequence[str]) -> list[int]:
    """COCO json category id of each class: COCO's ids for COCO's 80 classes, else ``index + 1``."""
    if list(names) == COCO_NAMES:
        return list(COCO_CATEGORY_IDS)
    return list(range(1, len(names) + 1))
