"""The wheel installs into a fresh venv and exposes every public name; bare folders do not leak."""

import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_imports_from_elsewhere(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("latentlm-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "latentlm/autoencoder/__init__.py" in names and "latentlm/presets/cpu-tiny.toml" in names
    assert not any(n.startswith(("autoencoder/", "diffusion/", "eval/", "tests/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # dependencies come from this environment (no download); latentlm only from the wheel
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    check = textwrap.dedent("""
        import importlib, latentlm
        assert "site-packages" in latentlm.__file__, latentlm.__file__
        for name in latentlm.__all__:
            getattr(latentlm, name)
        for mod in ["latentlm.autoencoder", "latentlm.diffusion", "latentlm.eval", "latentlm.cli"]:
            importlib.import_module(mod)
        for bare in ["autoencoder", "diffusion", "eval"]:
            try:
                importlib.import_module(bare)
            except ModuleNotFoundError:
                pass
            else:
                raise SystemExit(f"bare import {bare} should fail")
        print(len(latentlm.__all__))
    """)
    run = subprocess.run([str(py), "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.strip()) > 5
    cli = subprocess.run([str(env_dir / "bin" / "latentlm"), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert cli.returncode == 0 and "quickstart" in cli.stdout


def test_ruff_bans_bare_imports_of_the_code_folders():
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff not installed in this environment")
    for bad in ("import autoencoder\n", "from diffusion import x\n", "import eval.metrics\n"):
        proc = subprocess.run([str(ruff), "check", "--config", str(ROOT / "pyproject.toml"), "--select", "TID251",
                               "--stdin-filename", "probe.py", "-"], input=bad, capture_output=True, text=True)
        assert proc.returncode == 1 and "is banned" in proc.stdout, bad
    ok = subprocess.run([str(ruff), "check", "--config", str(ROOT / "pyproject.toml"), "--select", "TID251",
                         "--stdin-filename", "probe.py", "-"], input="import latentlm.autoencoder\n",
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
