import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pods"))
sys.path.insert(0, str(HERE))
import podlib  # noqa: E402


@pytest.fixture(scope="session")
def s3():
    return podlib.shared_s3()
