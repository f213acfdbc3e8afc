"""The installed Triton's version as a comparable tuple."""
import re
from typing import Tuple


def version_tuple(text: str) -> Tuple[int, ...]:
    """(major, minor, patch) of a version string such as "3.6.0" or "3.8.0+git1234"."""
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def triton_version() -> Tuple[int, ...]:
    import triton

    return version_tuple(triton.__version__)
