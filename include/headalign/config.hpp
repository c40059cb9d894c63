/// @file config.hpp
/// @brief Version, index and matrix aliases, error types and the checking macros of headalign.
#ifndef HEADALIGN_CONFIG_HPP
#define HEADALIGN_CONFIG_HPP

#include "errors.hpp"

#include <Eigen/Core>

#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

#define HEADALIGN_VERSION_MAJOR 0
#define HEADALIGN_VERSION_MINOR 1
#define HEADALIGN_VERSION_PATCH 0
#define HEADALIGN_VERSION_STRING "0.1.0"

namespace headalign {

// Index (errors.hpp) is std::ptrdiff_t, Eigen's default index type.
static_assert(std::is_same<Eigen::Index, Index>::value,
              "headalign: Eigen::Index must be std::ptrdiff_t (do not redefine EIGEN_DEFAULT_DENSE_INDEX_TYPE)");

/// Dense column-major matrix of scalar @p S.
template <class S>
using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

/// Dense column vector of scalar @p S.
template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;

/// @brief Outcome of an iterative computation (as Spectra's CompInfo).
enum class CompInfo {
  Successful,      ///< converged to the requested tolerance
  NotComputed,     ///< nothing was computed yet
  NotConverging,   ///< the iteration limit was reached first
  NumericalIssue   ///< a breakdown (non-finite intermediate) occurred
};

namespace detail {

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

}  // namespace detail
}  // namespace headalign

/// Internal invariant, compiled out under NDEBUG.
#ifdef NDEBUG
#define HEADALIGN_ASSERT(cond) ((void)0)
#else
#include <cassert>
#define HEADALIGN_ASSERT(cond) assert(cond)
#endif

#endif  // HEADALIGN_CONFIG_HPP
