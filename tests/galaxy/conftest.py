import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# podlib (S3 server, ferry, podman), Galaxy's job stubs, and the runner package as Galaxy would load it.
for path in (REPO / "tests/pods", REPO / "tests/galaxy_job", REPO / "galaxy", Path(__file__).resolve().parent):
    sys.path.insert(0, str(path))
import podlib  # noqa: E402


@pytest.fixture(scope="session")
def s3():
    return podlib.shared_s3()


@pytest.fixture(scope="session", autouse=True)
def images():
    """The ferry and tool images, built from the release binary (scripts/setup.sh does this too)."""
    subprocess.run([podlib.REPO / "scripts/build-images.sh", podlib.FERRY], check=True, capture_output=True)


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    """Galaxy's runner writes some files relative to the current directory: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)
