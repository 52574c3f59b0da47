"""launch.sh: Python discovery, torch choice, the install stamp, argument pass-through; tests/run.sh
and .ci/run. The full flow runs for real on a tiny stand-in project (own .venv, no torch)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch.sh"
BASH = shutil.which("bash") or "/bin/bash"  # absolute: some tests run with a PATH of fakes only

pytestmark = pytest.mark.skipif(os.name != "posix", reason="launch.sh is the Linux/macOS launcher")


def bash(script: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 60):
    full_env = {k: v for k, v in os.environ.items() if k not in ("TORCH_COMMAND", "PYTHON", "SKIP_INSTALL", "KILN_EXTRAS", "CI")}
    full_env.update(env or {})
    return subprocess.run([BASH, "-c", script], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def sourced(tmp_path: Path, body: str, env: dict[str, str] | None = None):
    """Run ``body`` with launch.sh's functions defined (KILN_DIR = tmp_path)."""
    shutil.copy(LAUNCH, tmp_path / "launch.sh")
    return bash(f"source ./launch.sh\n{body}", tmp_path, env)


def fake_command(folder: Path, name: str, script: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


@pytest.mark.parametrize("script", ["launch.sh", "tests/run.sh", ".ci/run"])
def test_scripts_are_valid_executable_bash(script):
    path = REPO / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_sourcing_runs_nothing(tmp_path):
    out = sourced(tmp_path, "echo sourced")
    assert out.returncode == 0 and out.stdout == "sourced\n"
    assert not (tmp_path / ".venv").exists()


def test_normalise_extras(tmp_path):
    out = sourced(tmp_path, 'kiln_normalise_extras "test, dev,test"; echo "[$(kiln_normalise_extras "")]"')
    assert out.stdout.splitlines() == ["dev,test", "[]"]


def test_stamp_logic(tmp_path):
    (tmp_path / ".venv").mkdir()
    out = sourced(tmp_path, textwrap.dedent("""
        check() { if kiln_stamp_is_current "$1" "$2"; then echo "$1/$2:yes"; else echo "$1/$2:no"; fi; }
        check k1 ""
        kiln_write_stamp k1 test
        check k1 ""; check k1 test; check k1 dev
        kiln_write_stamp k1 dev
        check k1 dev,test
        echo "stamp=$(paste -sd'|' "$STAMP")"
        kiln_write_stamp k2 ""
        check k1 ""; check k2 ""; check k2 test
    """))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "k1/:no",  # no stamp yet
        "k1/:yes", "k1/test:yes", "k1/dev:no",
        "k1/dev,test:yes",  # extras added for the same key accumulate
        "stamp=k1|dev,test",
        "k1/:no", "k2/:yes", "k2/test:no",  # a new key forgets the old extras
    ]
    assert (tmp_path / ".venv" / ".kiln-install-stamp").exists()


def test_install_key_follows_pyproject_and_torch_spec(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[project]\nname = 'a'\n")
    body = f'kiln_install_key "{sys.executable}" "cpu"; kiln_install_key "{sys.executable}" "cuda"'
    first = sourced(tmp_path, body).stdout.split()
    pyproject.write_text("[project]\nname = 'b'\n")
    second = sourced(tmp_path, body).stdout.split()
    assert all(re.fullmatch(r"[0-9a-f]{64}", k) for k in first + second)
    assert first[0] != first[1]  # torch spec changes the key
    assert first[0] != second[0]  # pyproject changes the key
    assert sourced(tmp_path, body).stdout.split() == second  # stable


def test_torch_spec(tmp_path):
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "nvidia-smi", "exit 0")
    path = f"{bin_dir}:/usr/bin:/bin"
    cuda = sourced(tmp_path, "kiln_torch_spec", {"PATH": path}).stdout.strip()
    assert cuda == "cuda: pip install torch --index-url https://download.pytorch.org/whl/cu124"
    fake_command(bin_dir, "nvidia-smi", "exit 9")  # installed but no working driver
    cpu = sourced(tmp_path, "kiln_torch_spec", {"PATH": path}).stdout.strip()
    assert cpu.startswith("cpu: torch==2.13.0")
    override = sourced(tmp_path, "kiln_torch_spec", {"PATH": path, "TORCH_COMMAND": "pip install torch==2.5.1"})
    assert override.stdout.strip() == "command: pip install torch==2.5.1"


def test_find_python_checks_the_version(tmp_path):
    # A PATH holding only fakes (and dirname, which launch.sh needs to find its folder).
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "python3", "exit 1")  # e.g. Python 3.9: fails the version check
    os.symlink(shutil.which("dirname"), bin_dir / "dirname")
    env = {"PATH": str(bin_dir)}
    out = sourced(tmp_path, "kiln_find_python || echo none", env)
    assert out.stdout.strip() == "none"
    fake_command(bin_dir, "python3.10", "exit 0")
    fake_command(bin_dir, "python3.12", "exit 0")
    out = sourced(tmp_path, "kiln_find_python", env)
    assert out.stdout.strip() == "python3.12"  # newest first
    out = sourced(tmp_path, "kiln_find_python", {**env, "PYTHON": sys.executable})
    assert out.stdout.strip() == sys.executable  # PYTHON wins


def test_no_suitable_python_is_a_clear_error(tmp_path):
    shutil.copy(LAUNCH, tmp_path / "launch.sh")
    out = bash("./launch.sh --install-only", tmp_path, {"PYTHON": str(tmp_path / "no-such-python")})
    assert out.returncode == 1
    assert "Kiln needs Python 3.10, 3.11 or 3.12" in out.stderr and "no-such-python" in out.stderr


def test_skip_install_without_venv_is_a_clear_error(tmp_path):
    shutil.copy(LAUNCH, tmp_path / "launch.sh")
    out = bash("./launch.sh", tmp_path, {"SKIP_INSTALL": "1"})
    assert out.returncode == 1 and "no " in out.stderr and ".venv" in out.stderr


# ---- the whole flow, for real, on a tiny project ------------------------------------------

TINY_PYPROJECT = """\
[build-system]
requires = []
build-backend = "probe_backend"
backend-path = ["."]

[project]
name = "kiln-launch-probe"
version = "0.0.1"

[project.optional-dependencies]
test = []
"""

# A PEP 517/660 build backend in a few lines, so the editable install needs nothing from an index
# (fast, offline, any Python): the wheel holds metadata and a .pth pointing at the project.
TINY_BACKEND = """\
import base64, hashlib, os, zipfile

NAME, VERSION = "kiln_launch_probe", "0.0.1"
DIST = NAME + "-" + VERSION + ".dist-info"


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return path + ",sha256=" + digest + "," + str(len(data))


def _wheel(wheel_directory):
    files = {
        NAME + ".pth": os.path.dirname(os.path.abspath(__file__)) + "\\n",
        DIST + "/METADATA": "Metadata-Version: 2.1\\nName: kiln-launch-probe\\nVersion: 0.0.1\\nProvides-Extra: test\\n",
        DIST + "/WHEEL": "Wheel-Version: 1.0\\nGenerator: probe\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    name = NAME + "-" + VERSION + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        lines = []
        for path, text in files.items():
            z.writestr(path, text)
            lines.append(_record_line(path, text.encode()))
        z.writestr(DIST + "/RECORD", "\\n".join(lines + [DIST + "/RECORD,,"]) + "\\n")
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory)
"""

TINY_APP = """\
import json, sys
import probe
print("APP-ARGS " + json.dumps(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A copy of launch.sh + tests/run.sh beside a dependency-free project, installed once.

    TORCH_COMMAND is a cheap pip command: the torch step runs exactly as it would, without the
    download. The project is editable-installed into its own .venv.
    """
    root = tmp_path_factory.mktemp("kiln-launch")
    shutil.copy(LAUNCH, root / "launch.sh")
    (root / "tests").mkdir()
    shutil.copy(REPO / "tests" / "run.sh", root / "tests" / "run.sh")
    (root / "pyproject.toml").write_text(TINY_PYPROJECT)
    (root / "probe.py").write_text("VALUE = 1\n")
    (root / "probe_backend.py").write_text(TINY_BACKEND)
    (root / "app.py").write_text(TINY_APP)
    # PIP_NO_INDEX: the stand-in needs nothing from an index, so nothing is looked up.
    env = {"TORCH_COMMAND": "pip --version", "PYTHON": sys.executable, "PIP_NO_INDEX": "1"}
    first = bash("./launch.sh --install-only", root, env, timeout=240)
    return root, env, first


@pytest.mark.slow  # creates a venv and installs into it
def test_first_run_creates_venv_installs_and_stamps(tiny_project):
    root, _, first = tiny_project
    assert first.returncode == 0, first.stdout + first.stderr
    lines = [line for line in first.stdout.splitlines() if line.startswith("kiln:")]
    assert lines[0].startswith("kiln: creating .venv with ")
    assert "kiln: installing torch: python -m pip --version" in lines
    assert "kiln: installing Kiln and its dependencies: pip install -e ." in lines
    assert lines[-1] == "kiln: install complete"
    assert "APP-ARGS" not in first.stdout  # --install-only does not start the app
    stamp = (root / ".venv" / ".kiln-install-stamp").read_text().splitlines()
    assert re.fullmatch(r"[0-9a-f]{64}", stamp[0])


@pytest.mark.slow  # creates a venv and installs into it
def test_second_run_skips_install_and_passes_arguments(tiny_project):
    root, env, _ = tiny_project
    out = bash('./launch.sh --listen --port 7861 "two words"', root, env)
    assert out.returncode == 0, out.stderr
    assert "kiln: packages up to date" in out.stdout
    assert "installing" not in out.stdout
    args = json.loads(out.stdout.split("APP-ARGS ", 1)[1].splitlines()[0])
    assert args == ["--listen", "--port", "7861", "two words"]


@pytest.mark.slow  # creates a venv and installs into it
def test_install_only_anywhere_in_the_arguments(tiny_project):
    root, env, _ = tiny_project
    out = bash("./launch.sh --listen --install-only", root, env)
    assert out.returncode == 0 and "APP-ARGS" not in out.stdout


@pytest.mark.slow  # creates a venv and installs into it
def test_changed_torch_command_reinstalls(tiny_project):
    root, env, _ = tiny_project
    out = bash("./launch.sh --install-only", root, {**env, "TORCH_COMMAND": "pip --version --quiet"})
    assert "kiln: installing torch: python -m pip --version --quiet" in out.stdout
    assert out.stdout.rstrip().endswith("kiln: install complete")
    # (the stamp now holds the other command: the run.sh test below installs again with env)


@pytest.mark.slow  # creates a venv and installs into it
def test_skip_install(tiny_project):
    root, env, _ = tiny_project
    (root / "pyproject.toml").write_text(TINY_PYPROJECT + "\n# changed\n")
    try:
        out = bash("./launch.sh --x", root, {**env, "SKIP_INSTALL": "1"})
        assert "kiln: SKIP_INSTALL=1: not installing" in out.stdout and "installing torch" not in out.stdout
        assert 'APP-ARGS ["--x"]' in out.stdout
    finally:
        (root / "pyproject.toml").write_text(TINY_PYPROJECT)


@pytest.mark.slow  # creates a venv and installs into it
def test_run_sh_installs_test_extras_and_fails_on_no_tests(tiny_project):
    root, env, _ = tiny_project
    tests = root / "tests"
    # The stand-in venv has no pytest; give it a "pytest" module with pytest's exit codes.
    site = bash(".venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'", root).stdout.strip()
    Path(site, "pytest.py").write_text(
        "import os, sys\nif __name__ == '__main__':\n    sys.exit(int(os.environ['FAKE_PYTEST_RC']))\n"
    )
    out = bash("bash tests/run.sh", root, {**env, "FAKE_PYTEST_RC": "5"})
    assert "kiln: installing Kiln and its dependencies: pip install -e .[test]" in out.stdout
    assert out.returncode == 1
    assert "collected no tests" in out.stderr
    stamp = (root / ".venv" / ".kiln-install-stamp").read_text().splitlines()
    assert stamp[1] == "test"  # the test extras were installed through launch.sh's logic
    assert bash("bash tests/run.sh", root, {**env, "FAKE_PYTEST_RC": "0"}).returncode == 0
    assert bash("bash tests/run.sh", root, {**env, "FAKE_PYTEST_RC": "1"}).returncode == 1
    # After the test run, a normal launch does not reinstall (test extras cover the base install).
    assert "packages up to date" in bash("./launch.sh --install-only", root, env).stdout
    assert tests.is_dir()


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci_lines == ["bash tests/run.sh"]
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    code_lines = [line.strip() for line in readme[:12] if line.strip() and not line.startswith(("#", "```"))]
    assert code_lines[:2] == ["./launch.sh", "bash tests/run.sh"]


def test_readme_lists_every_flag():
    from core.cli import build_parser

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    flags = {opt for a in build_parser()._actions for opt in a.option_strings if opt.startswith("--")}
    missing = sorted(f for f in flags - {"--help"} if f"`{f}" not in readme and f"{f}`" not in readme)
    assert missing == []


def test_launch_bat_is_consistent_with_launch_sh():
    """launch.bat cannot run here; check what can be checked without Windows."""
    raw = (REPO / "launch.bat").read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n")  # CRLF everywhere: cmd mis-parses labels with bare LF
    text = raw.decode("ascii")
    labels = {m.lower() for m in re.findall(r"^:(\w+)", text, re.M)}
    targets = {m.lower() for m in re.findall(r"\b(?:goto|call) :?(\w+)", text, re.I)}
    assert targets <= labels, f"jumps to missing labels: {targets - labels}"
    sh = LAUNCH.read_text()
    for name in ["CPU_TORCH_VERSION", "CUDA_TORCH_INDEX", "CPU_TORCH_INDEX"]:
        sh_value = re.search(rf'^{name}="([^"]+)"', sh, re.M).group(1)
        assert f'set "{name}={sh_value}"' in text, name
    for word in ["TORCH_COMMAND", "SKIP_INSTALL", "KILN_EXTRAS", "PYTHON", "--install-only",
                 ".kiln-install-stamp", "pip install -e", "nvidia-smi", "app.py"]:
        assert word in text, word
