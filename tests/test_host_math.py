"""`triton_kernels/utils/host_math.py` gives Triton's host-side `cdiv` and `next_power_of_2`."""
import pytest

triton = pytest.importorskip("triton")

from nested_kernels.triton_kernels.utils.host_math import cdiv, next_power_of_2  # noqa: E402


def test_cdiv_matches_triton():
    assert all(cdiv(x, y) == triton.cdiv(x, y) for x in range(0, 300) for y in (1, 2, 3, 16, 64, 100))


def test_next_power_of_2_matches_triton():
    assert all(next_power_of_2(n) == triton.next_power_of_2(n) for n in range(1, 5000))
    assert next_power_of_2(2**40 + 1) == 2**41
