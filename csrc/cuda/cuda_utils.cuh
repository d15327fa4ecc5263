// Launch helpers shared by the CUDA kernels. Only c10's CUDA headers are included: ATen's
// CUDAContext.h pulls in cuBLAS/cuSPARSE headers that a bare toolkit may lack.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace nncme {

inline int64_t blocks_for(int64_t n, int threads) {
  return std::max<int64_t>(1, (n + threads - 1) / threads);
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace nncme
