"""CMakeLists.txt builds the extension from csrc/SOURCES.txt and its C++ test passes under ctest."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# cmake and ninja may come from this environment's bin/ (the test extras) rather than the system
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _found(tool):
    return shutil.which(tool, path=ENV["PATH"]) is not None


@pytest.mark.slow
@pytest.mark.skipif(not (_found("cmake") and _found("ninja")), reason="needs cmake and ninja")
def test_cmake_build_and_ctest(tmp_path):
    build = tmp_path / "build"
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DPython3_EXECUTABLE={sys.executable}"]
    for cmd in (configure, ["cmake", "--build", str(build)], ["ctest", "--output-on-failure"]):
        result = subprocess.run(cmd, cwd=build if cmd[0] == "ctest" else ROOT, env=ENV, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "100% tests passed" in result.stdout
