"""Data: image decoding, dataset descriptions (data.yaml), and later training datasets."""
