"""`nn.Module` layers over the memory ops; each takes `backend=`."""
from .cms import CMS
from .conv import ShortConvolution
from .layers import LinearMemory, MemoryLayerState, MLPMemory

__all__ = ["LinearMemory", "MLPMemory", "CMS", "MemoryLayerState", "ShortConvolution"]
