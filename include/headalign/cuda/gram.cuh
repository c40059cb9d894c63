/// @file cuda/gram.cuh
/// @brief DeviceGram: the calibration statistics G = Σ x xᵀ accumulated on the GPU from
/// activations already in device memory (cuBLAS SYRK, or GEMM on tensor cores for TF32,
/// float16 and bfloat16 input), so an engine never copies activations to the host.
///
/// The same statistics as headalign::HeadGram (gram.hpp), with the same meaning of every field;
/// copy the result to the host and hand it to HeadGram::from_gram() for the rest of the
/// conversion:
/// @code
/// headalign::cuda::Context ctx;
/// headalign::cuda::DeviceGram<float> keys(32, 128, /*normalize_rows=*/false);
/// for (each calibration batch)                       // k_proj output: rows × 4096, row stride ld
///   keys.add(ctx, k_out, rows, ld, stream);
/// std::vector<float> lower(keys.dim() * keys.dim());
/// keys.copy_to_host(lower.data(), stream);
/// auto g = headalign::HeadGram<float>::from_gram(
///     Eigen::Map<headalign::Matrix<float>>(lower.data(), keys.dim(), keys.dim()), 32, 128, keys.tokens());
/// @endcode
#ifndef HEADALIGN_CUDA_GRAM_CUH
#define HEADALIGN_CUDA_GRAM_CUH

#include "common.cuh"

#include <cstddef>
#include <limits>
#include <type_traits>
#include <utility>

namespace headalign {
namespace cuda {

/// Options of DeviceGram::add().
struct GramOptions {
  /// float Gram from float tokens: one TF32 GEMM on tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32)
  /// instead of the exact FP32 SYRK; products carry TF32's 10-bit mantissa (about 1e-3 relative).
  bool tf32 = false;
  /// Scan the tokens for NaN/Inf and for values that could overflow the accumulator before
  /// adding (one read of the data; the call then waits for the stream). Throws, adding nothing,
  /// like HeadGram::add. Without it the call only queues work, and no overflow bound is kept.
  bool check = true;
};

/// @brief Streaming accumulator of \f$ G = \sum_t x_t x_t^\top \f$ over token rows
/// \f$ x_t \in R^{H·d} \f$ in device memory (S = float or double), as HeadGram on the host.
///
/// Storage: column-major (H·d) × (H·d), leading dimension H·d; only its lower triangle is
/// meaningful. Accumulators over disjoint tokens merge by addition.
template <class S>
class DeviceGram {
  static_assert(std::is_same<S, float>::value || std::is_same<S, double>::value,
                "headalign: DeviceGram accumulates in float or double");

 public:
  using Scalar = S;

  /// Allocates and zeroes G on the current device.
  /// @throws invalid_argument for non-positive sizes or (H·d)² beyond a 32-bit int
  /// @throws cuda_error when the allocation fails
  DeviceGram(Index num_heads, Index head_dim, bool normalize_rows = false)
      : h_(num_heads), d_(head_dim), normalize_(normalize_rows) {
    HEADALIGN_CHECK(num_heads > 0, "num_heads (" << num_heads << ") must be positive");
    HEADALIGN_CHECK(head_dim > 0, "head_dim (" << head_dim << ") must be positive");
    HEADALIGN_CHECK(
        num_heads <= 46340 && head_dim <= 46340 && dim() <= 46340,
        "num_heads · head_dim (" << num_heads << " · " << head_dim << ") is too large for one device Gram");
    HEADALIGN_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&g_), bytes()));
    const cudaError_t zeroed = cudaMemset(g_, 0, bytes());
    if (zeroed != cudaSuccess) {
      cudaFree(g_);
      HEADALIGN_CUDA_TRY(zeroed);
    }
  }
  DeviceGram(const DeviceGram&) = delete;
  DeviceGram& operator=(const DeviceGram&) = delete;
  DeviceGram(DeviceGram&& o) noexcept
      : h_(o.h_),
        d_(o.d_),
        normalize_(o.normalize_),
        tokens_(o.tokens_),
        bound_(o.bound_),
        g_(std::exchange(o.g_, nullptr)) {}
  ~DeviceGram() {
    if (g_) cudaFree(g_);
  }

  /// @brief Accumulates @p rows token rows of H·d values from device memory, row-major with
  /// @p row_stride elements per row (head h in columns [h·d, (h+1)·d)), as HeadGram::add().
  ///
  /// T = float, double, `__half` or `__nv_bfloat16`. Direct cuBLAS calls on the data where the
  /// types allow (float tokens into a float Gram: SYRK, or TF32 GEMM; half/bfloat16 tokens into a
  /// float Gram: GEMM with FP32 accumulation); otherwise converted, and with normalize_rows
  /// scaled per head to unit length, chunk by chunk (64 MiB of scratch at most).
  /// @throws invalid_argument for a null pointer, a row stride below H·d, TF32 with a double
  /// Gram, and (with GramOptions::check) NaN/Inf or values that could overflow — nothing is
  /// added then
  /// @throws cuda_error when a CUDA or cuBLAS call fails
  template <class T>
  void add(Context& context, const T* tokens, Index rows, Index row_stride, cudaStream_t stream,
           const GramOptions& options = {});

  /// @brief Adds the statistics of another accumulator (disjoint tokens): G ← G + G'.
  /// @throws invalid_argument when the shapes or the normalisation differ, or the sum could overflow
  void merge(Context& context, const DeviceGram& other, cudaStream_t stream) {
    HEADALIGN_CHECK(other.h_ == h_ && other.d_ == d_, "cannot merge a DeviceGram of "
                                                          << other.h_ << " × " << other.d_ << " into one of "
                                                          << h_ << " × " << d_);
    HEADALIGN_CHECK(other.normalize_ == normalize_, "cannot merge DeviceGrams with different normalize_rows");
    HEADALIGN_CHECK(bound_ + other.bound_ <= limit(), "merging these DeviceGrams could overflow the "
                                                          << (sizeof(S) == 4 ? "float" : "double")
                                                          << " accumulator");
    HEADALIGN_CHECK(&other != this, "cannot merge a DeviceGram into itself");
    const S one = 1;
    cublasHandle_t h = context.blas(stream);
    const int n = static_cast<int>(dim() * dim());
    if constexpr (std::is_same<S, float>::value) {
      HEADALIGN_CUDA_TRY(cublasSaxpy(h, n, &one, other.g_, 1, g_, 1));
    } else {
      HEADALIGN_CUDA_TRY(cublasDaxpy(h, n, &one, other.g_, 1, g_, 1));
    }
    tokens_ += other.tokens_;
    bound_ += other.bound_;
  }

  /// Zeroes the statistics (queued on @p stream).
  void reset(cudaStream_t stream) {
    HEADALIGN_CUDA_TRY(cudaMemsetAsync(g_, 0, bytes(), stream));
    tokens_ = 0;
    bound_ = 0;
  }

  /// Copies the (H·d)² storage, column-major (the lower triangle is G), to @p host; waits for @p stream.
  void copy_to_host(S* host, cudaStream_t stream) const {
    HEADALIGN_CHECK(host != nullptr, "the host buffer is null");
    HEADALIGN_CUDA_TRY(cudaMemcpyAsync(host, g_, bytes(), cudaMemcpyDeviceToHost, stream));
    HEADALIGN_CUDA_TRY(cudaStreamSynchronize(stream));
  }

  Index num_heads() const { return h_; }
  Index head_dim() const { return d_; }
  Index dim() const { return h_ * d_; }
  /// Number of token rows accumulated.
  Index tokens() const { return tokens_; }
  bool normalize_rows() const { return normalize_; }
  /// The device storage (lower triangle meaningful, leading dimension dim()).
  const S* data() const { return g_; }

 private:
  std::size_t bytes() const {
    return sizeof(S) * static_cast<std::size_t>(dim()) * static_cast<std::size_t>(dim());
  }
  static double limit() { return static_cast<double>(std::numeric_limits<S>::max()) / 4; }

  Index h_, d_;
  bool normalize_;
  Index tokens_ = 0;
  double bound_ = 0;  // an upper bound of max_i G_ii, kept when GramOptions::check is on
  S* g_ = nullptr;
};

}  // namespace cuda
}  // namespace headalign

#if defined(__CUDACC__)
#include "detail/gram_impl.cuh"
#endif

#endif  // HEADALIGN_CUDA_GRAM_CUH
