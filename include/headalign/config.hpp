/// @file config.hpp
/// @brief Version, index and matrix aliases, error types and the checking macros of headalign.
#ifndef HEADALIGN_CONFIG_HPP
#define HEADALIGN_CONFIG_HPP

#include "errors.hpp"

#include <Eigen/Core>

#include <cmath>
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

/// C ← A · op(B) + beta·C for row-major A (m × k, leading dimension lda), B (k × n, or n × k
/// when @p trans_b) and C (m × n, ldc): the per-head products of apply_alignment() and, through
/// gemm(), the d × d products of the polar factors, align_group() and predicted_merge_error().
/// With HEADALIGN_USE_BLAS a CBLAS ?gemm (the aligned fold of a 32 × 128 layer in 0.62× the
/// pure-Eigen time in double, 0.71× in float: benchmarks/README.md), otherwise Eigen. C's
/// contents are not read when beta = 0.
template <class S>
void gemm_row_major(Index m, Index n, Index k, const S* a, Index lda, const S* b, Index ldb, bool trans_b, S* c,
                    Index ldc, S beta = S(0)) {
  if (m == 0 || n == 0) return;
  using RowMajor = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<RowMajor, 0, Eigen::OuterStride<>> out(c, m, n, Eigen::OuterStride<>(ldc));
  if (k == 0) {  // (BLAS refuses leading dimensions of 0)
    if (beta == S(0))
      out.setZero();
    else
      out *= beta;
    return;
  }
#ifdef HEADALIGN_USE_BLAS
  if constexpr (std::is_same<S, float>::value || std::is_same<S, double>::value) {
    const auto tb = trans_b ? CblasTrans : CblasNoTrans;
    const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
    if constexpr (std::is_same<S, float>::value)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, im, in, ik, 1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                  static_cast<int>(ldc));
    else
      cblas_dgemm(CblasRowMajor, CblasNoTrans, tb, im, in, ik, 1.0, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                  static_cast<int>(ldc));
    return;
  }
#endif
  using In = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;
  const In lhs(a, m, k, Eigen::OuterStride<>(lda));
  if (beta == S(0)) {
    if (trans_b)
      out.noalias() = lhs * In(b, n, k, Eigen::OuterStride<>(ldb)).transpose();
    else
      out.noalias() = lhs * In(b, k, n, Eigen::OuterStride<>(ldb));
    return;
  }
  out *= beta;
  if (trans_b)
    out.noalias() += lhs * In(b, n, k, Eigen::OuterStride<>(ldb)).transpose();
  else
    out.noalias() += lhs * In(b, k, n, Eigen::OuterStride<>(ldb));
}

/// C ← A·B + beta·C for column-major Eigen matrices (C is resized when beta = 0, and must be
/// A.rows() × B.cols() otherwise), as gemm_row_major() on the row-major view Cᵀ = Bᵀ·Aᵀ.
template <class S>
void gemm(const Matrix<S>& a, const Matrix<S>& b, S beta, Matrix<S>& c) {
  if (beta == S(0)) c.resize(a.rows(), b.cols());
  gemm_row_major<S>(b.cols(), a.rows(), a.cols(), b.data(), b.rows(), a.data(), a.rows(), false, c.data(), c.rows(), beta);
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
/// Whether this CPU runs AVX2 + FMA code (checked once); the kernels that use it are compiled
/// with function-level `target("avx2,fma")`, so the build needs no global flags.
inline bool cpu_has_avx2_fma() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}
#endif

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
