"""Backend registry and `backend=` dispatch shared by every op (SPEC §0).

Every op registers the tiers it has. `backend="auto"` takes the first tier in AUTO_ORDER
that is registered and supports the call; naming a tier the op does not have raises
NotImplementedError, naming one that cannot run this call says why.
"""
from typing import Callable, Dict, NamedTuple, Optional

BACKENDS = ("reference", "torch", "triton", "cuda", "cpp")
# Fastest first. The measured CPU ratios that put cpp before torch are in the README.
AUTO_ORDER = ("cuda", "triton", "cpp", "torch")

# supports(call) -> None when the backend can run the call, else the reason it cannot. A call
# describes what the backends decide on: "device" (torch.device), "requires_grad" (bool: autograd
# records the call), "dtype" (of the main input) and the op's own facts (linear_memory: "K",
# "V", "chunk_size"; see each op's public function).
Supports = Callable[[dict], Optional[str]]


def _always(call: dict) -> Optional[str]:
    return None


class _Impl(NamedTuple):
    fn: Callable
    supports: Supports
    auto: Supports        # None when `backend="auto"` may pick it for this call (it can run and is fast here)


class OpBackends:
    """The tiers of one op."""

    def __init__(self, op: str):
        self.op = op
        self._impls: Dict[str, _Impl] = {}

    def register(self, backend: str, fn: Callable, supports: Supports = _always, auto: Supports = _always) -> None:
        assert backend in BACKENDS, backend
        self._impls[backend] = _Impl(fn, supports, auto)

    def implemented(self):
        return [b for b in BACKENDS if b in self._impls]

    def available(self, call: dict):
        """The tiers that can run `call` on this machine, in BACKENDS order."""
        return [b for b in self.implemented() if self._impls[b].supports(call) is None]

    def resolve(self, backend: str, call: dict) -> Callable:
        if backend == "auto":
            for name in AUTO_ORDER:
                impl = self._impls.get(name)
                if impl is not None and impl.supports(call) is None and impl.auto(call) is None:
                    return impl.fn
            raise RuntimeError(f"{self.op}: no backend can run this call (implemented: {self.implemented()})")
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {list(BACKENDS) + ['auto']}, got {backend!r}")
        impl = self._impls.get(backend)
        if impl is None:
            raise NotImplementedError(
                f"{self.op}: backend {backend!r} is not implemented yet; implemented: {self.implemented()}"
            )
        reason = impl.supports(call)
        if reason is not None:
            raise NotImplementedError(f"{self.op}: backend {backend!r} cannot run this call: {reason}")
        return impl.fn
