"""Session fixtures: tiny models built locally once (no hub), and test markers."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from inseq_ray.toy import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        "gpt2": str(build_tiny_model("gpt2", root / "gpt2", init_std=0.2)),
        # init_std=0.2: peaked outputs, so gradients are far above the 1e-5 tolerance.
        # relu activation: DeepLift's rescale rule applies to nn.ReLU modules
        "bart": str(build_tiny_model("bart", root / "bart", activation="relu", init_std=0.2)),
    }


@pytest.fixture(scope="session")
def gpt2(model_dir):
    import inseq_ray

    return inseq_ray.load_model(model_dir["gpt2"], "saliency", device="cpu")


@pytest.fixture(scope="session")
def bart(model_dir):
    import inseq_ray

    return inseq_ray.load_model(model_dir["bart"], "saliency", device="cpu")
