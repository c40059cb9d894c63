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

#include <cmath>
#include <utility>
#include <vector>

namespace headalign {

/// @brief How RoPE pairs a head's dimensions, and how many of them it rotates.
struct RopeSpec {
  enum class Pairing { HalfSplit, Interleaved };
  Pairing pairing = Pairing::HalfSplit;
  Index rotary_dims = 0;  ///< 0 = all head dimensions are rotary
};

/// @brief The number of rotary dimensions of a head of @p head_dim dimensions.
/// @throws invalid_argument when rotary_dims is negative, odd, or exceeds head_dim.
inline Index rotary_dims(const RopeSpec& rope, Index head_dim) {
  HEADALIGN_CHECK(head_dim > 0, "head_dim (" << head_dim << ") must be positive");
  const Index r = rope.rotary_dims == 0 ? head_dim : rope.rotary_dims;
  HEADALIGN_CHECK(r > 0 && r <= head_dim,
                  "rotary_dims (" << rope.rotary_dims << ") must lie in [0, head_dim = " << head_dim << "]");
  HEADALIGN_CHECK(r % 2 == 0, "rotary_dims (" << r << ") must be even: RoPE rotates pairs of dimensions");
  return r;
}

/// @brief The RoPE planes (a, b) of a head, plane p rotating with frequency ω_p = base^(−2p/r).
inline std::vector<std::pair<Index, Index>> rope_planes(const RopeSpec& rope, Index head_dim) {
  const Index r = rotary_dims(rope, head_dim);
  std::vector<std::pair<Index, Index>> planes(static_cast<std::size_t>(r / 2));
  for (Index p = 0; p < r / 2; ++p) {
    planes[static_cast<std::size_t>(p)] = rope.pairing == RopeSpec::Pairing::HalfSplit
                                              ? std::make_pair(p, p + r / 2)
                                              : std::make_pair(2 * p, 2 * p + 1);
  }
  return planes;
}

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
