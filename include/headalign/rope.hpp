/// @file rope.hpp
/// @brief Rotary position embedding (RoPE): pairing of dimensions into planes and its application.
///
/// RoPE rotates each plane (a, b) of a head vector by the angle m·ω_p at position m, with
/// ω_p = base^(−2p/r) for plane p of r rotary dimensions. Two pairings exist:
/// `HalfSplit` (Hugging Face `rotate_half`): plane p = (p, p + r/2);
/// `Interleaved` (Meta, GPT-J): plane p = (2p, 2p + 1).
/// Dimensions from r to d − 1 are not rotated (partial rotary: GPT-NeoX/Pythia, phi).
#ifndef HEADALIGN_ROPE_HPP
#define HEADALIGN_ROPE_HPP

#include "config.hpp"
#include "rope_spec.hpp"

#include <cmath>
#include <utility>
#include <vector>

namespace headalign {

/// @brief Applies RoPE at @p position to every row of @p x (rows are head vectors, n × d).
///
/// Row x becomes x' with, for plane p = (a, b) and angle φ = position·base^(−2p/r):
/// \f$ x'_a = x_a\cos φ - x_b \sin φ,\; x'_b = x_a \sin φ + x_b \cos φ \f$.
/// @return the rotated copy; non-rotary dimensions are unchanged.
template <class Derived>
Matrix<typename Derived::Scalar> apply_rope(const Eigen::MatrixBase<Derived>& x, double position,
                                            const RopeSpec& rope = {}, double base = 10000.0) {
  using S = typename Derived::Scalar;
  const Index d = x.cols();
  const Index r = rotary_dims(rope, d);
  Matrix<S> out = x;
  const auto planes = rope_planes(rope, d);
  for (std::size_t p = 0; p < planes.size(); ++p) {
    const double angle = position * std::pow(base, -2.0 * static_cast<double>(p) / static_cast<double>(r));
    const S c = static_cast<S>(std::cos(angle)), s = static_cast<S>(std::sin(angle));
    const Index a = planes[p].first, b = planes[p].second;
    out.col(a) = c * x.col(a) - s * x.col(b);
    out.col(b) = s * x.col(a) + c * x.col(b);
  }
  return out;
}

}  // namespace headalign

#endif  // HEADALIGN_ROPE_HPP
