/// @file cuda/detail/gram_impl.cuh
/// @brief Definition of DeviceGram::add() (nvcc only; included by gram.cuh).
#ifndef HEADALIGN_CUDA_DETAIL_GRAM_IMPL_CUH
#define HEADALIGN_CUDA_DETAIL_GRAM_IMPL_CUH

#include "../gram.cuh"
#include "kernels.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace headalign {
namespace cuda {
namespace detail {

/// largest = max |x| over the finite entries (as the bits of a non-negative double, which order
/// like the values), bad = 1 when an entry is NaN/Inf.
template <class T>
__global__ void scan_tokens(const T* x, Index rows, Index cols, Index ld, unsigned long long* largest,
                            int* bad) {
  double top = 0, nonfinite = 0;
  const Index n = rows * cols;
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const double v = to_double(x[(i / cols) * ld + i % cols]);
    if (!isfinite(v))
      nonfinite = 1;
    else
      top = fmax(top, fabs(v));
  }
  top = block_reduce(top, MaxOp{}, 0.0);
  nonfinite = block_reduce(nonfinite, MaxOp{}, 0.0);
  if (threadIdx.x == 0) {
    atomicMax(largest, static_cast<unsigned long long>(__double_as_longlong(top)));
    if (nonfinite > 0) atomicOr(bad, 1);
  }
}

/// out (rows × H·d, row-major, leading dimension H·d) = the tokens converted to S, each head's
/// vector scaled to unit length when @p normalize (norms in double; zero vectors stay zero).
/// One warp per (row, head).
template <class T, class S>
__global__ void convert_tokens(const T* x, Index rows, Index heads, Index d, Index ld, bool normalize,
                               S* out) {
  const Index warps_per_block = blockDim.x / 32, lane = threadIdx.x & 31;
  const Index total = rows * heads;
  for (Index w = blockIdx.x * warps_per_block + (threadIdx.x >> 5); w < total;
       w += static_cast<Index>(gridDim.x) * warps_per_block) {
    const Index row = w / heads, head = w % heads;
    const T* src = x + row * ld + head * d;
    S* dst = out + row * heads * d + head * d;
    double scale = 1;
    if (normalize) {
      double squares = 0;
      for (Index c = lane; c < d; c += 32) {
        const double v = to_double(src[c]);
        squares += v * v;
      }
      for (int o = 16; o > 0; o >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, o);
      const double norm = sqrt(squares);
      if (norm > 0) scale = 1 / norm;
    }
    for (Index c = lane; c < d; c += 32) dst[c] = static_cast<S>(to_double(src[c]) * scale);
  }
}

template <class T>
constexpr cudaDataType_t token_type() {
  if constexpr (std::is_same<T, __half>::value)
    return CUDA_R_16F;
  else if constexpr (std::is_same<T, __nv_bfloat16>::value)
    return CUDA_R_16BF;
  else if constexpr (std::is_same<T, float>::value)
    return CUDA_R_32F;
  else
    return CUDA_R_64F;
}

/// G (lower) += A Aᵀ for A = the D × k column-major view of k row-major token rows (stride ld).
template <class S, class T>
void rank_update(cublasHandle_t h, S* g, Index dim, const T* a, Index k, Index ld, bool gemm_tf32) {
  const int n = static_cast<int>(dim), kk = static_cast<int>(k), lda = static_cast<int>(ld);
  if constexpr (std::is_same<S, T>::value) {
    if (!gemm_tf32) {
      const S one = 1;
      if constexpr (std::is_same<S, float>::value) {
        HEADALIGN_CUDA_TRY(
            cublasSsyrk(h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, kk, &one, a, lda, &one, g, n));
      } else {
        HEADALIGN_CUDA_TRY(
            cublasDsyrk(h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, kk, &one, a, lda, &one, g, n));
      }
      return;
    }
  }
  if constexpr (std::is_same<S, float>::value) {
    // Both triangles are computed; the lower one is the statistic.
    const float one = 1;
    const cublasComputeType_t compute = gemm_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    HEADALIGN_CUDA_TRY(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, n, n, kk, &one, a, token_type<T>(), lda, a,
                                    token_type<T>(), lda, &one, g, CUDA_R_32F, n, compute,
                                    CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace detail

template <class S>
template <class T>
void DeviceGram<S>::add(Context& context, const T* tokens, Index rows, Index row_stride, cudaStream_t stream,
                        const GramOptions& options) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value ||
                    std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "headalign: DeviceGram::add takes float, double, __half or __nv_bfloat16 tokens");
  HEADALIGN_CHECK(rows >= 0, "rows (" << rows << ") must not be negative");
  HEADALIGN_CHECK(row_stride >= dim(),
                  "row_stride (" << row_stride << ") is smaller than num_heads · head_dim (" << dim() << ")");
  HEADALIGN_CHECK(row_stride <= std::numeric_limits<int>::max(),
                  "row_stride (" << row_stride << ") exceeds a 32-bit int");
  HEADALIGN_CHECK(tokens != nullptr || rows == 0, "the token pointer is null");
  HEADALIGN_CHECK(!options.tf32 || (std::is_same<S, float>::value),
                  "TF32 applies to a float DeviceGram only");
  if (rows == 0) return;
  double next = bound_;
  if (options.check) {
    DeviceBuffer<unsigned long long> largest(1, stream);
    DeviceBuffer<int> bad(1, stream);
    HEADALIGN_CUDA_TRY(cudaMemsetAsync(largest.data(), 0, sizeof(unsigned long long), stream));
    HEADALIGN_CUDA_TRY(cudaMemsetAsync(bad.data(), 0, sizeof(int), stream));
    detail::scan_tokens<T><<<detail::grid_for(rows * dim()), detail::kThreads, 0, stream>>>(
        tokens, rows, dim(), row_stride, largest.data(), bad.data());
    HEADALIGN_CUDA_CHECK_LAUNCH("scan_tokens");
    unsigned long long bits = 0;
    int nonfinite = 0;
    HEADALIGN_CUDA_TRY(cudaMemcpyAsync(&bits, largest.data(), sizeof bits, cudaMemcpyDeviceToHost, stream));
    HEADALIGN_CUDA_TRY(
        cudaMemcpyAsync(&nonfinite, bad.data(), sizeof nonfinite, cudaMemcpyDeviceToHost, stream));
    HEADALIGN_CUDA_TRY(cudaStreamSynchronize(stream));
    HEADALIGN_CHECK(nonfinite == 0, "token activations contain NaN or Inf");
    double top = 0;
    std::memcpy(&top, &bits, sizeof top);
    next = bound_ + static_cast<double>(rows) * (normalize_ ? 1.0 : top * top);
    HEADALIGN_CHECK(std::isfinite(next) && next <= limit(),
                    "token activations up to |x| = " << top << " could overflow the "
                                                     << (sizeof(S) == 4 ? "float" : "double")
                                                     << " Gram accumulator (sums of squares up to " << next
                                                     << "); accumulate in double or rescale");
  }
  cublasHandle_t h = context.blas(stream);
  const Index chunk_cap = std::numeric_limits<int>::max() / 2;
  constexpr bool half_input = std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;
  bool done = false;
  if constexpr (std::is_same<T, S>::value || (std::is_same<S, float>::value && half_input)) {
    if (!normalize_) {  // cuBLAS reads the tokens where they are
      for (Index t0 = 0; t0 < rows; t0 += chunk_cap)
        detail::rank_update<S, T>(h, g_, dim(), tokens + t0 * row_stride, std::min(chunk_cap, rows - t0),
                                  row_stride, options.tf32);
      done = true;
    }
  }
  if (!done) {
    const Index chunk =
        std::max<Index>(1, std::min<Index>(rows, (Index(64) << 20) / (dim() * Index(sizeof(S)))));
    DeviceBuffer<S> buf(static_cast<std::size_t>(chunk * dim()), stream);
    for (Index t0 = 0; t0 < rows; t0 += chunk) {
      const Index k = std::min(chunk, rows - t0);
      const unsigned blocks = static_cast<unsigned>(std::min<Index>((k * h_ + 7) / 8, 65535));
      detail::convert_tokens<T, S><<<blocks, detail::kThreads, 0, stream>>>(
          tokens + t0 * row_stride, k, h_, d_, row_stride, normalize_, buf.data());
      HEADALIGN_CUDA_CHECK_LAUNCH("convert_tokens");
      detail::rank_update<S, S>(h, g_, dim(), buf.data(), k, dim(), options.tf32);
    }
  }
  tokens_ += rows;
  if (options.check) bound_ = next;
}

}  // namespace cuda
}  // namespace headalign

#endif  // HEADALIGN_CUDA_DETAIL_GRAM_IMPL_CUH
