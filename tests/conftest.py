"""Shared fixtures: a small built-in ImageFolder made once per test session."""
from pathlib import Path

import pytest
import torch

from pretrain.data.synthetic import make_builtin_dataset


@pytest.fixture(scope="session")
def small_builtin(tmp_path_factory) -> Path:
    """Built-in data root with a small ImageFolder (10 classes x 12 train / 4 val images)."""
    root = tmp_path_factory.mktemp("builtin")
    make_builtin_dataset(root, seed=0, formats=("imagefolder",), imagefolder_train_per_class=12, imagefolder_val_per_class=4)
    return root


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models on a shared 2-core machine; a second thread only spin-waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
