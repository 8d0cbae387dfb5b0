"""Shared fixtures: tiny deterministic models (tests/helpers.py builds them) and the slow marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ftp_export.architectures import DEFAULT_MODEL_DIR, ModelRef, load_model
from tests.helpers import build_tiny

# Without a GPU the Triton kernels (tests/kernels) run in Triton's interpreter, which has to be on
# before anything imports triton: torch.compile / AOTInductor tests import it, and triton.language's
# own @jit helpers are built for one mode at import. Inductor's CPU code is C++, so nothing else
# changes. On a GPU the variable stays unset and the kernels run compiled (scripts/gpu_check.sh).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.hookimpl(optionalhook=True)  # pytest without xdist (the GPU check's Python) must still run
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (README's test command): a worker per core, at most four; each holds torch,
    transformers and the models and graphs of its test file."""
    return max(1, min(4, _cores()))


# An xdist worker shares the cores with the others: its torch ops get its share of them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, _cores() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FTP_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set FTP_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    return load_model(ModelRef("tiny", str(tiny_dir)))


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model (ftp_export/default_model), loaded once."""
    return load_model(ModelRef("default", str(DEFAULT_MODEL_DIR)))
