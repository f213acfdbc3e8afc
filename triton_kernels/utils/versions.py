"""The installed Triton's version as a comparable tuple."""
import re
from typing import Tuple


def version_tuple(text: str) -> Tuple[int, ...]:
    """(major, minor, patch) of a version string such as "3.6.0", "3.8.0+git1234" or "3.7+git1a2b"
    (patch 0: digits after the release part are not the patch)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(x or 0) for x in match.groups())


def triton_version() -> Tuple[int, ...]:
    import triton

    return version_tuple(triton.__version__)
