"""Shared fixtures: the synthetic data set and the shared copy of var_u.mat."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_VAR_U = REPO.parent / "shared" / "data" / "var_u.mat"


@pytest.fixture(scope="session")
def synthetic():
    from ibray.data import load_dataset

    return load_dataset("synthetic12")
