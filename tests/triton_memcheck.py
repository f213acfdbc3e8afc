"""A memory checker for Triton's interpreter: every load and store a kernel makes (where its mask
is on) must fall inside the storage of a tensor passed to that launch. On a GPU such an access is
an illegal address or silent garbage; the interpreter reads raw host memory and never notices.

    with memcheck():
        ...  # interpreted launches; the first stray access raises OutOfBounds
"""
import contextlib

import numpy as np


class OutOfBounds(AssertionError):
    pass


@contextlib.contextmanager
def memcheck():
    from triton.runtime import interpreter as it

    ranges = []                                   # [(start, end)) of the current launch's storages
    original_init = it.GridExecutor._init_args_hst
    original_load = it.InterpreterBuilder.create_masked_load
    original_store = it.InterpreterBuilder.create_masked_store

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = original_init(self, args_dev, kwargs)
        ranges.clear()
        for arg in list(args_hst) + list(kwargs_hst.values()):
            if hasattr(arg, "untyped_storage"):
                storage = arg.untyped_storage()
                ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes(), self.fn.__name__))
        return args_hst, kwargs_hst

    def check(kind, ptrs, mask):
        size = np.dtype(it._get_np_dtype(ptrs.get_element_ty())).itemsize
        # as bool: a mask combined with a scalar condition can arrive as integers, which would index
        addresses = ptrs.data[np.broadcast_to(mask.data.astype(bool), ptrs.data.shape)].astype(np.uint64)
        if addresses.size == 0:
            return
        inside = np.zeros(addresses.shape, dtype=bool)
        for start, end, _ in ranges:
            inside |= (addresses >= start) & (addresses + size <= end)
        if not inside.all():
            bad = int(addresses[~inside][0])
            nearest = min(ranges, key=lambda r: min(abs(bad - r[0]), abs(bad - r[1])))
            raise OutOfBounds(f"{kind} outside every argument of {nearest[2]}: {int((~inside).sum())} of "
                              f"{addresses.size} addresses, e.g. {bad - nearest[0]:+d} bytes from the start of the "
                              f"nearest storage [{nearest[0]}, {nearest[1]}) ({nearest[1] - nearest[0]} bytes)")

    def load(self, ptrs, mask, other, *rest):
        check("load", ptrs, mask)
        return original_load(self, ptrs, mask, other, *rest)

    def store(self, ptrs, value, mask, *rest):
        check("store", ptrs, mask)
        return original_store(self, ptrs, value, mask, *rest)

    it.GridExecutor._init_args_hst = init_args
    it.InterpreterBuilder.create_masked_load = load
    it.InterpreterBuilder.create_masked_store = store
    try:
        yield
    finally:
        it.GridExecutor._init_args_hst = original_init
        it.InterpreterBuilder.create_masked_load = original_load
        it.InterpreterBuilder.create_masked_store = original_store
