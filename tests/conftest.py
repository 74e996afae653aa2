"""Shared pytest setup."""

from __future__ import annotations

import os

import torch

# The test machines are small and shared: with every core busy, torch's default intra-op
# thread pool spin-waits and makes tiny forward passes 10-50x slower. One thread keeps the
# suite fast and its timings steady; override with LEYOLO_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("LEYOLO_TEST_THREADS", "1")))
