"""Integer helpers for the launch code on the host. Triton's `triton.cdiv` and
`triton.next_power_of_2` are constexpr functions (Triton 3.6 and 3.8): a host call unwraps its
arguments and imports inside the call, about 1.5 µs each against a few tens of nanoseconds for the
integer expression, and the launch code of one forward + backward made some twenty of them."""


def cdiv(x: int, y: int) -> int:
    """⌈x / y⌉ for positive y."""
    return -(-x // y)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ≥ n (1 for n ≤ 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
