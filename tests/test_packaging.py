"""A built wheel installed into a fresh virtual environment gives a working amdet-audit with its bundled files."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True)
    [built] = out.glob("amdet_audit-*.whl")
    return built


def test_wheel_holds_templates_policies_and_vocabulary(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "amdet_audit/_bundled/templates/summary.md.j2" in names
    assert "amdet_audit/_bundled/policies/default.yaml" in names
    assert "amdet_audit/data/clip_bpe_simple_vocab_16e6.txt.gz" in names
    assert not any(n.startswith("tests/") for n in names)


def test_fresh_venv_install_works(wheel: Path, tmp_path: Path, tiny_clip: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # dependencies (torch, transformers...) come from this environment; the package itself from the wheel
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    cli = env_dir / "bin" / "amdet-audit"
    where = subprocess.run([str(python), "-c", "import amdet_audit, amdet_audit.resources as r; "
                            "print(amdet_audit.__file__); print(r.bundled('policies'))"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(env_dir)) and where[1].endswith("_bundled/policies")
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("amdet-audit ")
    inspected = subprocess.run([str(cli), "inspect", str(tiny_clip), "--format", "json"], capture_output=True,
                               text=True, cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert '"CLIPTextModel"' in inspected.stdout
    canaries = subprocess.run([str(python), "-c", "from amdet_audit.sources.canary import registered_canaries as r; "
                               "print(sorted((n, [e.value for e in eps]) for n, eps in r().items()))"],
                              capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "('backdoored', ['amdet_audit.lab.canaries:BACKDOORED'])" in canaries and "'clean'" in canaries
