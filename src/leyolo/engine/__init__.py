"""Engine: the training loop (hooks, EMA, AMP, DDP, resume), COCO evaluation and validation."""
