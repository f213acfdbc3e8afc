"""The flat chunk layout (nested_kernels/common/flat_chunks.py): B rows built on the device from
the shape alone match the same tokens laid out as `cu_seqlens` sequences, round-trip, and touch
no CPU tensor."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nested_kernels.common.flat_chunks import flat_chunks


def _fields(layout):
    return [None if x is None else x.tolist() for x in (layout.index, layout.slots, layout.chunk_offsets,
                                                         layout.last_rows)]


@pytest.mark.parametrize("B,T,C", [(3, 40, 16), (2, 64, 32), (1, 5, 64), (4, 1, 16)],
                         ids=lambda x: str(x))
def test_batch_layout_matches_varlen(B, T, C):
    batch = flat_chunks(B, T, C, None, "cpu")
    varlen = flat_chunks(1, B * T, C, torch.arange(B + 1) * T, "cpu")
    index, slots, offsets, last_rows = _fields(varlen)
    assert _fields(batch)[2:] == [offsets, last_rows]
    if T % C:
        assert _fields(batch)[:2] == [index, slots]
    else:                                                   # a view: no index
        assert batch.index is None and batch.slots is None and index == list(range(B * T))
    x = torch.randn(B, T, 3, 2)
    for layout in (batch, varlen):
        flat = layout.flatten(x, pad_value=float("nan"))
        assert flat.shape[0] == len(last_rows) * C and flat.isnan().sum() == (flat.shape[0] - B * T) * 6
        assert torch.equal(layout.unflatten(flat, B, T), x)


class _Devices(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [*args, *(kwargs or {}).values(), *(out if isinstance(out, (tuple, list)) else [out])]
        self.devices |= {x.device.type for x in tensors if isinstance(x, torch.Tensor)}
        return out


@pytest.mark.parametrize("T", [64, 70], ids=["aligned", "padded"])
def test_batch_layout_stays_on_device(T, monkeypatch):
    """No tensor is made on the host and none from host data (on a GPU a host-to-device copy from
    pageable memory waits for the stream: the GPU would idle while the host prepares the next
    launches)."""
    def no_host_data(*args, **kwargs):
        raise AssertionError("torch.tensor: a tensor from host data")
    monkeypatch.setattr(torch, "tensor", no_host_data)
    with _Devices() as mode:
        layout = flat_chunks(2, T, 32, None, "meta")
    assert mode.devices == {"meta"} and layout.last_rows.device.type == "meta"
