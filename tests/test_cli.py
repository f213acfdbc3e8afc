"""The `nested-kernels` command: `info` describes the build, `check` passes here and fails loudly."""
import subprocess
import sys


from nested_kernels import cli
from nested_kernels.linear_memory import BACKENDS as LINEAR_BACKENDS


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "compiled extension nested_kernels._C" in out
    assert "linear_memory" in out and "mlp_memory" in out and "cms_level" in out


def test_cli_check_passes(capsys):
    assert cli.main(["check", "--quiet", "--op", "linear_memory", "--op", "cms_level"]) == 0
    out = capsys.readouterr().out
    assert "| linear_memory | mom+dgd" in out and "FAIL" not in out
    assert "0 failed" in out


def test_cli_check_mlp_memory_triton(capsys):
    """The check runs mlp_memory's triton backend (interpreted here), forward and backward."""
    assert cli.main(["check", "--quiet", "--op", "mlp_memory"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| mlp_memory ") and "| triton " in line]
    assert len(rows) == 2 and all("| pass " in row and "forward-only" not in row for row in rows), out
    assert "0 failed" in out


def test_cli_check_fails_on_a_wrong_backend(capsys, monkeypatch):
    """A torch tier that is off by a little is caught, and the exit code says so."""
    impl = LINEAR_BACKENDS._impls["torch"]

    def off_by_a_little(*args, **kwargs):
        o, state = impl.fn(*args, **kwargs)
        return o * (1 + 1e-3), state

    monkeypatch.setitem(LINEAR_BACKENDS._impls, "torch", impl._replace(fn=off_by_a_little))
    assert cli.main(["check", "--quiet", "--op", "linear_memory"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out


def test_cli_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "nested_kernels", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "check" in result.stdout
