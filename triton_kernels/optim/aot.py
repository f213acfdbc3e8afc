"""The shipped configurations of the multi-frequency optimiser's kernel, for `nested-kernels compile-report`."""
from ..utils.aot import AotSpec
from .multi_frequency import MAX_BLOCK, multi_frequency_accumulate_kernel, num_warps

AOT_SPECS = [
    AotSpec(
        name=f"multi_frequency_accumulate-BLOCK{block}-{'aligned' if aligned else 'unaligned'}",
        kernel=multi_frequency_accumulate_kernel,
        signature={"tensors": "*i64", "programs": "*i64", "NB": "i32"},
        constexprs={"BLOCK": block, "IS_ALIGNED": aligned},
        num_warps=num_warps(block),
    )
    for block in (128, MAX_BLOCK)
    for aligned in (True, False)
]
