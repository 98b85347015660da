import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def shared_data() -> Path:
    assert SHARED.is_dir(), f"benchmark data expected at {SHARED}"
    return SHARED


@pytest.fixture
def benchmark_module():
    """Load ``benchmarks/<name>.py`` (not a package) as a module: ``benchmark_module("gpu_train")``."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="module")
def shrec(tmp_path_factory):
    """Two classes of SHREC'16 (camel, two_balls), unpacked from the shared archive (shape tests)."""
    import tarfile

    dest = tmp_path_factory.mktemp("shrec")
    with tarfile.open(SHARED / "shapes" / "shrec_16.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(("shrec_16/camel/", "shrec_16/two_balls/"))]
        tar.extractall(dest, members=members, filter="data")
    return dest / "shrec_16"
