/// @file config.hpp
/// @brief The basics every header shares: the version, the index and matrix aliases, CompInfo,
/// the error types and the checking macros. Internals live in detail/ (numeric, blas, cpu).
#ifndef HEADALIGN_CONFIG_HPP
#define HEADALIGN_CONFIG_HPP

#include <headalign/version.hpp>  // generated from the project version (cmake/version.hpp.in)
#include "errors.hpp"

#include <Eigen/Core>

#include <type_traits>

namespace headalign {

// Index (errors.hpp) is std::ptrdiff_t, Eigen's default index type.
static_assert(
    std::is_same<Eigen::Index, Index>::value,
    "headalign: Eigen::Index must be std::ptrdiff_t (do not redefine EIGEN_DEFAULT_DENSE_INDEX_TYPE)");

/// Dense column-major matrix of scalar @p S.
template <class S>
using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;

/// Dense column vector of scalar @p S.
template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;

/// @brief Outcome of an iterative computation (as Spectra's CompInfo).
enum class CompInfo {
  Successful,     ///< converged to the requested tolerance
  NotComputed,    ///< nothing was computed yet
  NotConverging,  ///< the iteration limit was reached first
  NumericalIssue  ///< a breakdown (non-finite intermediate) occurred
};

}  // namespace headalign

/// Internal invariant, compiled out under NDEBUG.
#ifdef NDEBUG
#define HEADALIGN_ASSERT(cond) ((void)0)
#else
#include <cassert>
#define HEADALIGN_ASSERT(cond) assert(cond)
#endif

#endif  // HEADALIGN_CONFIG_HPP
