import os

# Nothing in the tests may download: set before transformers / diffusers are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from helpers import tiny_model  # noqa: E402


@pytest.fixture
def tiny():
    return tiny_model
