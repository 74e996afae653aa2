"""Shared pytest setup."""

from __future__ import annotations

import os

import torch

# The test machines are small and shared: with every core busy, torch's default intra-op
# thread pool spin-waits and makes tiny forward passes 10-50x slower. One thread keeps the
# suite fast and its timings steady; override with LEYOLO_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("LEYOLO_TEST_THREADS", "1")))


import pytest


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory, monkeypatch):
    """Label caches of a test run go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("LEYOLO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "leyolo-cache"))


# Shared by the export and predict tests: the published nano (or an untrained leyolo-n), a score
# threshold that keeps boxes for it, and three images of different shapes. Module-scoped.
@pytest.fixture(scope="module")
def detector():
    from shared_data import sample_detector

    return sample_detector()


@pytest.fixture(scope="module")
def conf() -> float:
    from shared_data import sample_conf

    return sample_conf()


@pytest.fixture(scope="module")
def images():
    from shared_data import sample_images

    return sample_images()


@pytest.fixture(scope="module")
def nano():
    """The published nano checkpoint (tests using it are marked ``needs_shared``)."""
    from shared_data import NANO

    import leyolo

    return leyolo.load(NANO)
