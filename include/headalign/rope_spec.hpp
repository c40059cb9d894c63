/// @file rope_spec.hpp
/// @brief RopeSpec and the RoPE planes of a head, without Eigen (shared by the CPU library and the
/// CUDA headers); see rope.hpp for the pairings.
#ifndef HEADALIGN_ROPE_SPEC_HPP
#define HEADALIGN_ROPE_SPEC_HPP

#include "errors.hpp"

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

}  // namespace headalign

#endif  // HEADALIGN_ROPE_SPEC_HPP
