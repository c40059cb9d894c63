/// @file detail/blas.hpp
/// @brief The dense products and factorisations the stages dispatch to BLAS / LAPACK.
///
/// With HEADALIGN_USE_BLAS (the `headalign::blas` target) the products go to CBLAS ?gemm / ?syrk;
/// with HEADALIGN_USE_LAPACKE the factorisations to LAPACKE; otherwise everything is Eigen.
#ifndef HEADALIGN_DETAIL_BLAS_HPP
#define HEADALIGN_DETAIL_BLAS_HPP

#include "../config.hpp"

#include <type_traits>

#ifdef HEADALIGN_USE_BLAS
#include <cblas.h>
#endif
#ifdef HEADALIGN_USE_LAPACKE
#include <lapacke.h>
#endif

namespace headalign {
namespace detail {

/// C ← A · op(B) + beta·C for row-major A (m × k, leading dimension lda), B (k × n, or n × k
/// when @p trans_b) and C (m × n, ldc): the per-head products of apply_alignment() and, through
/// gemm(), the d × d products of the polar factors, align_group() and predicted_merge_error().
/// With HEADALIGN_USE_BLAS a CBLAS ?gemm (the aligned fold of a 32 × 128 layer in 0.62× the
/// pure-Eigen time in double, 0.71× in float: benchmarks/README.md), otherwise Eigen. C's
/// contents are not read when beta = 0.
template <class S>
void gemm_row_major(Index m, Index n, Index k, const S* a, Index lda, const S* b, Index ldb, bool trans_b,
                    S* c, Index ldc, S beta = S(0)) {
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
      cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, im, in, ik, 1.0f, a, static_cast<int>(lda), b,
                  static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
    else
      cblas_dgemm(CblasRowMajor, CblasNoTrans, tb, im, in, ik, 1.0, a, static_cast<int>(lda), b,
                  static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
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
  gemm_row_major<S>(b.cols(), a.rows(), a.cols(), b.data(), b.rows(), a.data(), a.rows(), false, c.data(),
                    c.rows(), beta);
}

/// C ← C + A Aᵀ (lower triangle) with A = D × k column-major, leading dimension lda; with
/// @p trans, C ← C + Aᵀ A with A = k × D column-major.
template <class S>
void syrk_lower(Matrix<S>& c, const S* a, Index k, Index lda, bool trans = false) {
  const Index n = c.rows();
  if (k == 0 || n == 0) return;
#ifdef HEADALIGN_USE_BLAS
  if constexpr (std::is_same<S, float>::value || std::is_same<S, double>::value) {
    const auto op = trans ? CblasTrans : CblasNoTrans;
    if constexpr (std::is_same<S, float>::value)
      cblas_ssyrk(CblasColMajor, CblasLower, op, static_cast<int>(n), static_cast<int>(k), 1.0f, a,
                  static_cast<int>(lda), 1.0f, c.data(), static_cast<int>(n));
    else
      cblas_dsyrk(CblasColMajor, CblasLower, op, static_cast<int>(n), static_cast<int>(k), 1.0, a,
                  static_cast<int>(lda), 1.0, c.data(), static_cast<int>(n));
    return;
  }
#endif
  using Map = Eigen::Map<const Matrix<S>, 0, Eigen::OuterStride<>>;
  if (trans)
    c.template selfadjointView<Eigen::Lower>().rankUpdate(
        Map(a, k, n, Eigen::OuterStride<>(lda)).transpose());
  else
    c.template selfadjointView<Eigen::Lower>().rankUpdate(Map(a, n, k, Eigen::OuterStride<>(lda)));
}

/// True when the polar factor / singular values are computed by LAPACK for scalar S.
template <class S>
constexpr bool lapack_scalar() {
#ifdef HEADALIGN_USE_LAPACKE
  return std::is_same<S, float>::value || std::is_same<S, double>::value;
#else
  return false;
#endif
}

#ifdef HEADALIGN_USE_LAPACKE
inline lapack_int getrf(lapack_int n, float* a, lapack_int* piv) {
  return LAPACKE_sgetrf(LAPACK_COL_MAJOR, n, n, a, n, piv);
}
inline lapack_int getrf(lapack_int n, double* a, lapack_int* piv) {
  return LAPACKE_dgetrf(LAPACK_COL_MAJOR, n, n, a, n, piv);
}
inline lapack_int getri(lapack_int n, float* a, const lapack_int* piv) {
  return LAPACKE_sgetri(LAPACK_COL_MAJOR, n, a, n, piv);
}
inline lapack_int getri(lapack_int n, double* a, const lapack_int* piv) {
  return LAPACKE_dgetri(LAPACK_COL_MAJOR, n, a, n, piv);
}
inline lapack_int gecon(lapack_int n, const float* lu, float anorm, float* rcond) {
  return LAPACKE_sgecon(LAPACK_COL_MAJOR, '1', n, lu, n, anorm, rcond);
}
inline lapack_int gecon(lapack_int n, const double* lu, double anorm, double* rcond) {
  return LAPACKE_dgecon(LAPACK_COL_MAJOR, '1', n, lu, n, anorm, rcond);
}
inline lapack_int gesdd(char jobz, lapack_int n, float* a, float* s, float* u, float* vt) {
  return LAPACKE_sgesdd(LAPACK_COL_MAJOR, jobz, n, n, a, n, s, u, n, vt, n);
}
inline lapack_int gesdd(char jobz, lapack_int n, double* a, double* s, double* u, double* vt) {
  return LAPACKE_dgesdd(LAPACK_COL_MAJOR, jobz, n, n, a, n, s, u, n, vt, n);
}
#endif

}  // namespace detail
}  // namespace headalign

#endif  // HEADALIGN_DETAIL_BLAS_HPP
