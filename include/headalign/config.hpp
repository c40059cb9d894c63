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

#ifdef HEADALIGN_USE_BLAS
#include <cblas.h>
#endif

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

/// C ← A·B + beta·C for column-major Eigen matrices (C sized by the caller when beta ≠ 0): the
/// d × d products of the polar factors, align_group() and predicted_merge_error(). With
/// HEADALIGN_USE_BLAS a CBLAS ?gemm, otherwise Eigen.
template <class S>
void gemm(const Matrix<S>& a, const Matrix<S>& b, S beta, Matrix<S>& c) {
  if (beta == S(0)) c.resize(a.rows(), b.cols());
  if (c.size() == 0) return;
#ifdef HEADALIGN_USE_BLAS
  if constexpr (std::is_same<S, float>::value || std::is_same<S, double>::value) {
    const int m = static_cast<int>(a.rows()), n = static_cast<int>(b.cols()), k = static_cast<int>(a.cols());
    if (k == 0) {
      c *= beta;
      return;
    }
    if constexpr (std::is_same<S, float>::value)
      cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a.data(), m, b.data(), k, beta, c.data(), m);
    else
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0, a.data(), m, b.data(), k, beta, c.data(), m);
    return;
  }
#endif
  if (beta == S(0))
    c.noalias() = a * b;
  else {
    c *= beta;
    c.noalias() += a * b;
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
