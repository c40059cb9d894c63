/// @file cuda/math.cuh
/// @brief The scalar math of the CUDA kernels, shared with the host (and tested there): the RoPE
/// plane rotation in closed form and the scaled Newton–Schulz schedule.
#ifndef HEADALIGN_CUDA_MATH_CUH
#define HEADALIGN_CUDA_MATH_CUH

#include "common.cuh"

#include <cmath>
#include <limits>
#include <vector>

namespace headalign {
namespace cuda {

/// @brief The best 2×2 rotation of one RoPE plane: [[c, −s], [s, c]] and its score.
template <class S>
struct PlaneRotation {
  S c;      ///< cos θ
  S s;      ///< sin θ
  S score;  ///< tr(Rᵀ m) = hypot(m00 + m11, m10 − m01)
};

/// @brief Closed-form Procrustes of one RoPE plane (procrustes.hpp, Alignment::Rope): for the 2×2 block m of
/// M on the plane (a, b), \f$ θ = \mathrm{atan2}(m_{10} - m_{01}, m_{00} + m_{11}) \f$ maximises tr(R(θ)ᵀ m),
/// with score \f$ \mathrm{hypot}(m_{00}+m_{11}, m_{10}-m_{01}) \f$. The sums are taken of halves so that
/// finite entries near the largest float cannot overflow; a zero block gives θ = 0.
template <class S>
HEADALIGN_HD inline PlaneRotation<S> rope_plane(S m00, S m01, S m10, S m11) {
  const S c0 = m00 / S(2) + m11 / S(2), s0 = m10 / S(2) - m01 / S(2);
#if defined(__CUDA_ARCH__)
  const S h = hypot(c0, s0);
#else
  const S h = std::hypot(c0, s0);
#endif
  if (h > S(0)) return {c0 / h, s0 / h, S(2) * h};
  return {S(1), S(0), S(0)};
}

/// @brief One step of the scaled Newton–Schulz polar iteration on singular values:
/// \f$ g_α(x) = \tfrac{α}{2} x (3 - α^2 x^2) \f$, i.e. \f$ X ← X (a I - b X^\top X) \f$ with
/// a = 3α/2, b = α³/2 for the matrix.
inline double newton_schulz_map(double x, double alpha) {
  return 0.5 * alpha * x * (3.0 - alpha * alpha * x * x);
}

/// @brief The scalings α_k of the scaled Newton–Schulz iteration for singular values in
/// [ℓ₀, 1] (Chen & Chow 2014): \f$ α_k = \sqrt{3 / (1 + ℓ_k + ℓ_k^2)} \f$ makes
/// g(ℓ_k) = g(1), so [ℓ_k, 1] maps into [ℓ_{k+1}, 1] with \f$ ℓ_{k+1} = g_{α_k}(ℓ_k) \f$; small
/// singular values grow by up to 3√3/2 ≈ 2.6 per step instead of 1.5, and the lower end reaches
/// 1 − @p tolerance quadratically at the end. With X₀ = M/‖M‖_F every singular value lies in
/// (0, 1]; those at least ℓ₀ are within tolerance of 1 after these steps.
/// @param lower_bound ℓ₀ ∈ (0, 1]
/// @param tolerance stop when 1 − ℓ_k ≤ tolerance (> 0)
/// @throws invalid_argument for ℓ₀ or a tolerance out of range
inline std::vector<double> newton_schulz_scalings(double lower_bound, double tolerance) {
  HEADALIGN_CHECK(lower_bound > 0 && lower_bound <= 1,
                  "Newton–Schulz lower_bound (" << lower_bound << ") must lie in (0, 1]");
  HEADALIGN_CHECK(tolerance > 0 && tolerance < 1,
                  "Newton–Schulz tolerance (" << tolerance << ") must lie in (0, 1)");
  std::vector<double> alphas;
  double l = lower_bound;
  while (1.0 - l > tolerance && alphas.size() < 200) {
    const double alpha = std::sqrt(3.0 / (1.0 + l + l * l));
    alphas.push_back(alpha);
    l = newton_schulz_map(l, alpha);
  }
  return alphas;
}

}  // namespace cuda
}  // namespace headalign

#endif  // HEADALIGN_CUDA_MATH_CUH
