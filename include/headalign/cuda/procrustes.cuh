/// @file cuda/procrustes.cuh
/// @brief Batched polar factors / orthogonal Procrustes rotations and their scores on the GPU.
///
/// For each d × d matrix M of a batch in device memory, the R that maximises tr(Rᵀ M) over the
/// orthogonal matrices (the polar factor of M, Eq. (4) of arXiv 2412.20677: R = U Vᵀ for
/// M = U Σ Vᵀ, score Σσ) or over the rotations that commute with RoPE (closed form per plane), as
/// headalign::procrustes() computes it on the CPU. Four methods behind one call:
///
/// | method | what runs | sizes |
/// |---|---|---|
/// | `GesvdjLoop` | cuSOLVER `gesvdj` once per matrix, then R = U Vᵀ (what `torch.linalg.svd` does for d >
/// 32) | any d | | `GesvdjBatched` | cuSOLVER `gesvdjBatched` | d ≤ 32 | | `NewtonSchulz` | scaled
/// Newton–Schulz iteration X ← X(aI − b XᵀX) on `cublasGemmStridedBatchedEx` (FP32, optionally TF32) | any d
/// | | `Rope` | one kernel: θ = atan2(m10 − m01, m00 + m11) per RoPE plane; non-rotary dimensions by
/// `NewtonSchulz` | any d |
///
/// Matrices are dense d × d with leading dimension d, either at a fixed stride d² from one base
/// pointer or through a device array of pointers (cuBLAS's batched convention). Column-major or
/// row-major alike: polar(Mᵀ) = polar(M)ᵀ, so R comes back in the storage order of M.
#ifndef HEADALIGN_CUDA_PROCRUSTES_CUH
#define HEADALIGN_CUDA_PROCRUSTES_CUH

#include "../rope_spec.hpp"
#include "common.cuh"
#include "math.cuh"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace headalign {
namespace cuda {

/// How procrustes_batched() computes the rotations.
enum class PolarMethod {
  GesvdjLoop,     ///< cuSOLVER gesvdj per matrix (the baseline)
  GesvdjBatched,  ///< cuSOLVER gesvdjBatched, d ≤ 32
  NewtonSchulz,   ///< scaled Newton–Schulz on batched GEMMs (the default)
  Rope            ///< RoPE-commuting rotations in closed form (PolarOptions::rope)
};

/// Options of procrustes_batched(); zeros pick the documented defaults.
struct PolarOptions {
  PolarMethod method = PolarMethod::NewtonSchulz;
  RopeSpec rope = {};  ///< pairing and rotary dimensions (`Rope` only)
  /// `NewtonSchulz` on float: every GEMM but those of the last two iterations in TF32
  /// (CUBLAS_COMPUTE_32F_FAST_TF32); the closing FP32 iterations restore orthogonality to FP32
  /// round-off, and R differs from the FP32 result by about TF32's 1e-3 relative precision.
  bool tf32 = false;
  /// `NewtonSchulz`: assumed lower bound ℓ₀ of σ_min/‖M‖_F that sets the scaled schedule
  /// (0: 1e-4 in float, 1e-6 in double). Smaller singular values still converge, by the
  /// unscaled iterations that follow (×1.5 per step), or by the fallback.
  double lower_bound = 0;
  /// `NewtonSchulz`: a matrix has converged when ‖XᵀX − I‖_F ≤ tolerance before its last step
  /// (the step squares the error); 0: 1e-3 in float, 1e-7 in double. Gesvdj methods: cuSOLVER's
  /// tolerance (0: machine precision).
  double tolerance = 0;
  /// `NewtonSchulz`: most iterations in all (0: the schedule + 40). Gesvdj: most sweeps (0: 100).
  int max_iterations = 0;
  /// Check the input for NaN/Inf (throwing invalid_argument before writing any output),
  /// check convergence and measure ‖RᵀR − I‖_F: the call then waits for the stream. Without it
  /// the work is only queued on the stream (`NewtonSchulz` runs the schedule + 2 steps), and a
  /// matrix holding NaN/Inf gets R = 0 and score 0 from `NewtonSchulz` (garbage from gesvdj).
  bool verify = true;
  /// With verify: `NewtonSchulz` matrices that did not converge are recomputed by gesvdj (at
  /// cuSOLVER's default tolerance). `Rope` reports a non-rotary block that did not converge.
  bool fallback = true;
  /// Scratch memory per pass (matrices are processed in chunks that fit it).
  std::size_t scratch_bytes = std::size_t(1) << 30;
};

/// What procrustes_batched() did.
struct PolarReport {
  PolarMethod method = PolarMethod::NewtonSchulz;
  int iterations = 0;    ///< `NewtonSchulz` (also `Rope`'s non-rotary part): iterations of the longest chunk
  bool checked = false;  ///< verify ran: the fields below are measured
  bool converged = false;   ///< every matrix converged (after the fallback)
  Index not_converged = 0;  ///< matrices that missed the tolerance (gesvdj: info ≠ 0), before the fallback
  Index recomputed = 0;     ///< of those, recomputed by gesvdj
  double max_orthogonality_error =
      std::numeric_limits<double>::quiet_NaN();  ///< max ‖RᵀR − I‖_F of the results
};

/// @brief Procrustes rotations and scores of a strided batch: M_b = m + b·d², R_b = r + b·d².
///
/// R_b maximises \f$ \mathrm{tr}(R^\top M_b) \f$ (orthogonal R; RoPE-commuting R for
/// `PolarMethod::Rope`), scores[b] = tr(R_bᵀ M_b) (= Σσ for the orthogonal set). With M = Aᵀ B
/// this aligns A onto B: A R ≈ B. @p r or @p scores may be null (not both). All pointers are
/// device memory; work is queued on @p stream.
/// @throws invalid_argument for d < 1, batch < 0, null pointers, d > 32 with `GesvdjBatched`,
/// TF32 outside `NewtonSchulz` on float, an invalid RopeSpec, options out of range — before any
/// device work; with verify, for NaN/Inf in a matrix (naming it) before any output is written
/// @throws cuda_error when a CUDA, cuBLAS or cuSOLVER call fails
template <class S>
PolarReport procrustes_batched(Context& context, const S* m, S* r, S* scores, Index d, Index batch,
                               cudaStream_t stream, const PolarOptions& options = {});

/// @brief The same for arrays of device pointers: M_b = m[b], R_b = r[b] (@p m and @p r are
/// device arrays of @p batch device pointers; @p r may be null).
template <class S>
PolarReport procrustes_batched(Context& context, const S* const* m, S* const* r, S* scores, Index d,
                               Index batch, cudaStream_t stream, const PolarOptions& options = {});

namespace detail {

/// The options with their defaults filled in, validated (host only, no device work).
template <class S>
PolarOptions resolved(PolarOptions o, Index d, Index batch, bool has_m, bool has_output) {
  HEADALIGN_CHECK(d >= 1, "matrix size d (" << d << ") must be positive");
  HEADALIGN_CHECK(d <= 46340, "matrix size d (" << d << ") is too large (d² must fit a 32-bit int)");
  HEADALIGN_CHECK(batch >= 0, "batch (" << batch << ") must not be negative");
  HEADALIGN_CHECK(has_m || batch == 0, "the input matrices are null");
  HEADALIGN_CHECK(has_output || batch == 0, "nothing to compute: the rotations and the scores are both null");
  HEADALIGN_CHECK(o.method != PolarMethod::GesvdjBatched || d <= 32,
                  "GesvdjBatched takes matrices up to 32 × 32, not " << d << " × " << d
                                                                     << " (use GesvdjLoop or NewtonSchulz)");
  HEADALIGN_CHECK(!o.tf32 || (std::is_same<S, float>::value), "TF32 applies to float matrices only");
  HEADALIGN_CHECK(!o.tf32 || o.method == PolarMethod::NewtonSchulz || o.method == PolarMethod::Rope,
                  "TF32 applies to the NewtonSchulz method only");
  HEADALIGN_CHECK(o.lower_bound >= 0 && o.lower_bound <= 1,
                  "lower_bound (" << o.lower_bound << ") must lie in [0, 1]");
  HEADALIGN_CHECK(o.tolerance >= 0 && o.tolerance < 1,
                  "tolerance (" << o.tolerance << ") must lie in [0, 1)");
  HEADALIGN_CHECK(o.max_iterations >= 0, "max_iterations (" << o.max_iterations << ") must not be negative");
  HEADALIGN_CHECK(o.scratch_bytes > 0, "scratch_bytes must be positive");
  if (o.method == PolarMethod::Rope) (void)rotary_dims(o.rope, d);
  const bool single = std::is_same<S, float>::value;
  if (o.lower_bound == 0) o.lower_bound = single ? 1e-4 : 1e-6;
  const bool gesvdj = o.method == PolarMethod::GesvdjLoop || o.method == PolarMethod::GesvdjBatched;
  if (o.tolerance == 0 && !gesvdj) o.tolerance = single ? 1e-3 : 1e-7;
  return o;
}

/// The Newton–Schulz schedule of resolved options: the scalings that bring [ℓ₀, 1] to within
/// the unit round-off of 1.
template <class S>
std::vector<double> schedule(const PolarOptions& o) {
  return newton_schulz_scalings(o.lower_bound, 4 * static_cast<double>(std::numeric_limits<S>::epsilon()));
}

}  // namespace detail
}  // namespace cuda
}  // namespace headalign

#if defined(__CUDACC__)
#include "detail/procrustes_impl.cuh"
#endif

#endif  // HEADALIGN_CUDA_PROCRUSTES_CUH
