/// @file cuda/backend.cuh
/// @brief The whole optional CUDA backend: batched Procrustes / polar factors and device Gram
/// accumulation (never included by headalign.hpp; CMake target `headalign::cuda`).
///
/// Define `HEADALIGN_CUDA_INSTANTIATE` before including this header in exactly one `.cu` unit
/// of a program to compile the float and double instantiations there; every other unit (plain
/// C++ included) then only needs the declarations:
/// @code
/// // headalign_cuda.cu (compiled by nvcc)
/// #define HEADALIGN_CUDA_INSTANTIATE
/// #include <headalign/cuda/backend.cuh>
/// @endcode
#ifndef HEADALIGN_CUDA_BACKEND_CUH
#define HEADALIGN_CUDA_BACKEND_CUH

#include "common.cuh"
#include "gram.cuh"
#include "math.cuh"
#include "procrustes.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#if defined(HEADALIGN_CUDA_INSTANTIATE)
#if !defined(__CUDACC__)
#error "HEADALIGN_CUDA_INSTANTIATE: compile this unit with nvcc (a .cu file)"
#endif
namespace headalign {
namespace cuda {
#define HEADALIGN_CUDA_INSTANTIATE_SCALAR(S)                                                         \
  template PolarReport procrustes_batched<S>(Context&, const S*, S*, S*, Index, Index, cudaStream_t, \
                                             const PolarOptions&);                                   \
  template PolarReport procrustes_batched<S>(Context&, const S* const*, S* const*, S*, Index, Index, \
                                             cudaStream_t, const PolarOptions&);                     \
  template class DeviceGram<S>;                                                                      \
  template void DeviceGram<S>::add<float>(Context&, const float*, Index, Index, cudaStream_t,        \
                                          const GramOptions&);                                       \
  template void DeviceGram<S>::add<double>(Context&, const double*, Index, Index, cudaStream_t,      \
                                           const GramOptions&);                                      \
  template void DeviceGram<S>::add<__half>(Context&, const __half*, Index, Index, cudaStream_t,      \
                                           const GramOptions&);                                      \
  template void DeviceGram<S>::add<__nv_bfloat16>(Context&, const __nv_bfloat16*, Index, Index,      \
                                                  cudaStream_t, const GramOptions&);
HEADALIGN_CUDA_INSTANTIATE_SCALAR(float)
HEADALIGN_CUDA_INSTANTIATE_SCALAR(double)
#undef HEADALIGN_CUDA_INSTANTIATE_SCALAR
}  // namespace cuda
}  // namespace headalign
#endif

#endif  // HEADALIGN_CUDA_BACKEND_CUH
