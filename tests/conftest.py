"""Shared fixtures: small encoder folders built locally, and an in-process CLI runner."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# Tests share 2 cores with each other's subprocesses: one thread each avoids contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process; a private canary cache for the whole session."""
    import torch

    torch.set_num_threads(1)
    cache = Path(config.rootpath) / ".pytest_cache" / "amdet-audit-cache"
    os.environ.setdefault("AMDET_AUDIT_CACHE", str(cache))


#: the files that take longest on 2 cores (--durations), started first so that no long file starts last
LONGEST_FILES = ("test_sdxl_detection.py", "test_canaries_bidirectional.py", "test_lab.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files that build and train models first (the longest of them before the others), the quick ones after:
    with ``--dist loadfile --no-loadscope-reorder`` the quick files then fill the workers' idle time at the end
    instead of a long file starting last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def order(item: pytest.Item) -> tuple[bool, int]:
        longest = LONGEST_FILES.index(item.path.name) if item.path.name in LONGEST_FILES else len(LONGEST_FILES)
        return item.path not in slow_files, longest

    items.sort(key=order)  # stable: each file keeps its own order


@dataclass
class CliResult:
    """What one in-process CLI run returned."""

    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``amdet-audit ARGS`` in-process through the real entry point (error mapping included)."""
    from amdet_audit.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        old_argv = sys.argv
        sys.argv = ["amdet-audit", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
        finally:
            sys.argv = old_argv
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random tiny CLIP text tower folder (SD 1.x-like: EOS padding)."""
    from amdet_audit.lab.folders import tiny_clip_folder

    return tiny_clip_folder(tmp_path_factory.mktemp("tiny") / "clip", hidden=32, layers=1, heads=2)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers-style pipeline folder: two text encoders (SDXL-like) and a dummy unet."""
    from amdet_audit.lab.folders import tiny_clip_folder
    from amdet_audit.lab.pipelines import assemble_sdxl

    parts = tmp_path_factory.mktemp("parts")
    one = tiny_clip_folder(parts / "one", hidden=32, layers=1, heads=2, seed=1)
    two = tiny_clip_folder(parts / "two", hidden=48, layers=2, heads=2, pad="!", projection=True, seed=2)
    return assemble_sdxl(tmp_path_factory.mktemp("pipe") / "sdxl-tiny", one, two)


@pytest.fixture
def copy_of(tmp_path: Path):
    """Copy a fixture folder into this test's tmp_path so the test may damage it."""

    def copy(folder: Path) -> Path:
        return Path(shutil.copytree(folder, tmp_path / folder.name))

    return copy

