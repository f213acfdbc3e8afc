// Qualifiers of the arithmetic that the CPU kernels and the CUDA kernels share (the headers under
// csrc/<op>/ written once for both): nvcc compiles it for host and device, a C++ compiler for the host.
#pragma once

#if defined(__CUDACC__)
#define NK_HOST_DEVICE __host__ __device__
// Host-device templates whose policy's members may be device-only (mma.sync): no host/device check.
#define NK_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
#else
#define NK_HOST_DEVICE
#define NK_EXEC_CHECK_DISABLE
#endif

#define NK_RESTRICT __restrict__
