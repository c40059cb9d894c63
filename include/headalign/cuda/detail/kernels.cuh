/// @file cuda/detail/kernels.cuh
/// @brief Building blocks of the CUDA kernels (nvcc only): block reductions, batch addressing,
/// conversions and the batched GEMM call.
#ifndef HEADALIGN_CUDA_DETAIL_KERNELS_CUH
#define HEADALIGN_CUDA_DETAIL_KERNELS_CUH

#include "../common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace headalign {
namespace cuda {
namespace detail {

/// Threads per block of every kernel (a multiple of 32).
constexpr int kThreads = 256;

/// Matrix b of a batch: base + b·stride, or ptrs[b] when ptrs is set.
template <class T>
struct BatchRef {
  T* base = nullptr;
  Index stride = 0;
  T* const* ptrs = nullptr;
  __host__ __device__ bool valid() const { return base != nullptr || ptrs != nullptr; }
  __device__ T* operator()(Index b) const { return ptrs ? ptrs[b] : base + b * stride; }
};

struct SumOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct MaxOp {
  __device__ double operator()(double a, double b) const { return a > b ? a : b; }
};

/// Reduction of one value per thread over the block (blockDim.x a multiple of 32); every thread
/// gets the result. Safe to call repeatedly in one kernel.
template <class Op>
__device__ double block_reduce(double v, Op op, double identity) {
  __shared__ double part[32];
  __shared__ double result;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? part[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

template <class T>
__device__ inline double to_double(T x) {
  if constexpr (std::is_same<T, __half>::value) {
    return static_cast<double>(__half2float(x));
  } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    return static_cast<double>(__bfloat162float(x));
  } else {
    return static_cast<double>(x);
  }
}

template <class S>
constexpr cudaDataType_t data_type() {
  return std::is_same<S, float>::value ? CUDA_R_32F : CUDA_R_64F;
}

/// C_b = op(A_b) op(B_b) for @p count d × d matrices at stride d² (cublasGemmStridedBatchedEx).
template <class S>
void gemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int d, const S* a, const S* b,
                  S* c, int count, bool tf32) {
  const S one = 1, zero = 0;
  const long long stride = static_cast<long long>(d) * d;
  const cublasComputeType_t compute = std::is_same<S, double>::value ? CUBLAS_COMPUTE_64F
                                      : tf32                         ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                     : CUBLAS_COMPUTE_32F;
  HEADALIGN_CUDA_TRY(cublasGemmStridedBatchedEx(h, ta, tb, d, d, d, &one, a, data_type<S>(), d, stride, b,
                                                data_type<S>(), d, stride, &zero, c, data_type<S>(), d,
                                                stride, count, compute, CUBLAS_GEMM_DEFAULT));
}

/// Blocks for a grid-stride loop over @p n elements.
inline unsigned grid_for(Index n) {
  const Index blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<Index>(std::max<Index>(blocks, 1), 65535));
}

/// Throws cuda_error when the last kernel launch failed.
inline void check_launch(const char* kernel, const char* file, int line) {
  check(cudaGetLastError(), kernel, file, line);
}

}  // namespace detail
}  // namespace cuda
}  // namespace headalign

#define HEADALIGN_CUDA_CHECK_LAUNCH(name) ::headalign::cuda::detail::check_launch(name, __FILE__, __LINE__)

#endif  // HEADALIGN_CUDA_DETAIL_KERNELS_CUH
