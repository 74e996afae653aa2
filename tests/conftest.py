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


@pytest.fixture(scope="session")
def trained_shapes(tmp_path_factory):
    """A ``leyolo-n`` trained once per test session (~45 s) on 96 synthetic 128-px shapes images.

    Returns ``shared_data.TrainedShapes``: the loaded detector, the weights, data.yaml, its val images,
    and val metrics of the trained and of the untrained network on the same data. Tests that need a
    detector that really finds objects without ``../shared`` use it.
    """
    from shared_data import train_shapes

    root = tmp_path_factory.mktemp("trained-shapes")
    with pytest.MonkeyPatch.context() as mp:  # the function-scoped cache fixture does not cover a session one
        mp.setenv("LEYOLO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "leyolo-cache"))
        return train_shapes(root)


def _trained_unless_shared(request):
    from shared_data import HAVE_SHARED

    return None if HAVE_SHARED else request.getfixturevalue("trained_shapes")


# Shared by the export, predict, CLI, quantize and prune tests: the published nano (or, without
# ../shared, the trained shapes model), a score threshold at which it keeps boxes, and three images of
# different shapes with objects in them (coco-mini val photos, or mosaics of the shapes val images).
# Module-scoped: each module gets its own fresh load.
@pytest.fixture(scope="module")
def detector(request):
    from shared_data import sample_detector

    return sample_detector(_trained_unless_shared(request))


@pytest.fixture(scope="module")
def conf() -> float:
    from shared_data import sample_conf

    return sample_conf()


@pytest.fixture(scope="module")
def images(request):
    from shared_data import sample_images

    return sample_images(_trained_unless_shared(request))


@pytest.fixture(scope="module")
def detector_weights(request) -> str:
    """The weights file ``detector`` was loaded from (for CLI tests)."""
    from shared_data import sample_weights

    return sample_weights(_trained_unless_shared(request))


@pytest.fixture(scope="module")
def nano():
    """The published nano checkpoint (tests using it are marked ``needs_shared``)."""
    from shared_data import NANO

    import leyolo

    return leyolo.load(NANO)
