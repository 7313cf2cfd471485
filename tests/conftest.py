"""Shared fixtures: a small built-in ImageFolder made once per test session."""
from pathlib import Path

import pytest

from pretrain.data.synthetic import make_builtin_dataset


@pytest.fixture(scope="session")
def small_builtin(tmp_path_factory) -> Path:
    """Built-in data root with a small ImageFolder (10 classes x 12 train / 4 val images)."""
    root = tmp_path_factory.mktemp("builtin")
    make_builtin_dataset(root, seed=0, formats=("imagefolder",), imagefolder_train_per_class=12, imagefolder_val_per_class=4)
    return root
