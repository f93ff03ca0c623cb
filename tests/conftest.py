import importlib
import os

import pytest

# Tests run on the CPU whatever the machine has; keep XLA from grabbing every core's memory.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real data beside the clone (the project's machines; CI gets a copy of shared/ beside it).
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: over ~20 s on 2 CPU cores; still runs in CI "
                                       "(deselect with -m 'not slow')")


def missing(reason: str) -> None:
    """Skips with `reason` on a developer's machine; fails under CI=true, where every reference
    package and the shared data are installed by .ci/run, so a skip would hide a lost check."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: CI must have it; see .ci/run)", pytrace=False)
    pytest.skip(reason)


def require(module: str, why: str = "an independent reference for this test"):
    """`import module`, or `missing(...)` with the install command: torch, torchvision and
    pycocotools are test references (`pip install -e ".[test-references]"`), never runtime
    dependencies."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing(f"{module} is not installed ({why}): pip install -e \".[test-references]\" "
                f"({error})")


def require_shared_data(*parts: str) -> str:
    """The path of ../shared/data/<parts>, or `missing(...)` where it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        missing(f"{os.path.normpath(path)} is absent (only the project's machines and CI have "
                "../shared/data)")
    return path
