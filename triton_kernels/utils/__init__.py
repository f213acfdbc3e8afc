"""Primitives shared by the Triton kernels of every op, and the ahead-of-time compile report (`aot`)."""
