/// @file detail/numeric.hpp
/// @brief Checks every stage shares: finiteness, overflow of results, exact power-of-two scaling,
/// the scalar's name in messages, and valid, distinct head indices.
#ifndef HEADALIGN_DETAIL_NUMERIC_HPP
#define HEADALIGN_DETAIL_NUMERIC_HPP

#include "../config.hpp"

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

namespace headalign {
namespace detail {

/// "float" or "double", for messages.
template <class S>
constexpr const char* scalar_name() {
  return std::is_same<S, float>::value ? "float" : "double";
}

/// Whether every coefficient of @p m is finite. x·0 is 0 for finite x and NaN for ±Inf or NaN,
/// so one vectorised sum decides (Eigen's allFinite() is an unvectorised element-wise test and
/// cost more than the SYRK it guarded on large inputs).
template <class Derived>
bool all_finite(const Eigen::DenseBase<Derived>& m) {
  using S = typename Derived::Scalar;
  const S sum = (m.derived().array() * S(0)).sum();
  return sum == sum;
}

/// Throws when @p m holds a NaN or an infinity; @p what names the argument.
template <class Derived>
void check_finite(const Eigen::DenseBase<Derived>& m, const char* what) {
  if (!all_finite(m)) {
    throw_invalid_argument(std::string(what) + " contains NaN or Inf");
  }
}

/// Throws invalid_argument for a result that came out NaN or Inf from finite, validated inputs:
/// the arithmetic left S's range (e.g. float weights near 1e38, whose squares overflow).
template <class S>
[[noreturn]] void throw_overflow(const std::string& who) {
  throw_invalid_argument(
      who + ": the result overflowed " + scalar_name<S>() +
      " (the inputs are finite but too large for its range: convert in double, or rescale)");
}

/// throw_overflow() unless every one of the freshly computed @p parts is finite (only what an
/// operation computed needs the check: its inputs were validated).
template <class S, class... Parts>
void check_no_overflow(const std::string& who, const Parts&... parts) {
  if (!(all_finite(parts) && ...)) throw_overflow<S>(who);  // one vectorised sum per part
}

/// The power of two that brings @p largest (≥ 0) into [1/2, 1): `exponent` e with
/// largest = f · 2^e, f ∈ [1/2, 1) (0 when largest is 0), and 2^−e as two factors `down`, each a
/// normal number where 2^−e alone can overflow or be subnormal. Multiplying by both scales
/// exactly (no step rounds); ldexp(·, e) undoes it.
template <class S>
struct PowerOfTwo {
  int exponent = 0;
  S down[2] = {S(1), S(1)};
};

template <class S>
PowerOfTwo<S> power_of_two(S largest) {
  PowerOfTwo<S> p;
  if (largest > S(0)) std::frexp(largest, &p.exponent);
  p.down[0] = std::ldexp(S(1), -(p.exponent / 2));
  p.down[1] = std::ldexp(S(1), -(p.exponent - p.exponent / 2));
  return p;
}

/// @brief Head indices of one layer, each allowed once: the one check behind groups, group
/// members and permutations.
class HeadSet {
 public:
  /// @param num_heads the layer's heads; @param who the function named in messages
  HeadSet(Index num_heads, const char* who)
      : n_(num_heads), who_(who), seen_(static_cast<std::size_t>(num_heads), 0) {}

  /// Marks @p heads; throws invalid_argument naming the head unless each lies in [0, num_heads)
  /// and none was marked before (here or by an earlier add()). @p where says where the heads
  /// were listed ("in order", "in the group", ...).
  void add(const std::vector<Index>& heads, const char* where) {
    for (Index h : heads) {
      HEADALIGN_CHECK(h >= 0 && h < n_,
                      who_ << ": head " << h << " out of range for " << n_ << " heads (" << where << ")");
      HEADALIGN_CHECK(!seen_[static_cast<std::size_t>(h)],
                      who_ << ": head " << h << " appears twice (" << where << ")");
      seen_[static_cast<std::size_t>(h)] = 1;
    }
    count_ += static_cast<Index>(heads.size());
  }

  /// Heads marked so far.
  Index count() const { return count_; }

 private:
  Index n_;
  const char* who_;
  std::vector<char> seen_;
  Index count_ = 0;
};

/// Throws unless @p order is a permutation of 0 … n−1.
inline void check_permutation(const std::vector<Index>& order, Index n, const char* who) {
  HEADALIGN_CHECK(static_cast<Index>(order.size()) == n,
                  who << ": order has " << order.size() << " entries for " << n << " heads");
  HeadSet(n, who).add(order, "in order");
}

}  // namespace detail
}  // namespace headalign

#endif  // HEADALIGN_DETAIL_NUMERIC_HPP
