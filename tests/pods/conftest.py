import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import podlib  # noqa: E402


@pytest.fixture(scope="session")
def s3():
    return podlib.shared_s3()


@pytest.fixture(scope="session", autouse=True)
def images():
    """The ferry and tool images, built from the release binary (scripts/setup.sh does this too)."""
    subprocess.run([podlib.REPO / "scripts/build-images.sh", podlib.FERRY], check=True, capture_output=True)
