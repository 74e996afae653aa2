"""Data: image decoding, dataset descriptions (data.yaml), training datasets, augmentations, loaders, synthetic shapes."""
