/// @file detail/simd_bidiagonal.hpp
/// @brief Singular-value sums of several square matrices at once, for similarity_matrix().
///
/// The nuclear norm \f$ \|M\|_* = \sum_i \sigma_i(M) \f$ of every head pair is the bulk of a
/// similarity matrix (496 matrices of 128 × 128 for 32 heads). LAPACK's ?gesdd('N') reduces each
/// matrix to bidiagonal form \f$ M = Q B P^\top \f$ one at a time with matrix–vector products
/// (its blocked path starts above n = 128). Here W matrices (4 doubles or 8 floats: one 256-bit
/// register) are stored interleaved, element (i, j) of matrix l at `a[(j·n + i)·W + l]`, and
/// reduced together by the same Householder steps (Golub & Kahan 1965; LAPACK ?gebd2), every
/// arithmetic operation acting on all W matrices, with AVX2 + FMA selected at run time. The
/// singular values of each bidiagonal B then come from LAPACK ?bdsqr (dqds, Fernando & Parlett
/// 1994), so the sums carry the same backward error as ?gesdd's.
///
/// Compiled only with HEADALIGN_USE_LAPACKE on x86-64 with GCC or Clang, and used only when
/// the CPU has AVX2 and FMA; everything else takes the one-matrix path. Define
/// HEADALIGN_NO_SIMD_BIDIAGONAL to disable it.
#ifndef HEADALIGN_DETAIL_SIMD_BIDIAGONAL_HPP
#define HEADALIGN_DETAIL_SIMD_BIDIAGONAL_HPP

#include "../config.hpp"
#include "blas.hpp"
#include "cpu.hpp"
#include "numeric.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(HEADALIGN_USE_LAPACKE) && !defined(HEADALIGN_NO_SIMD_BIDIAGONAL) && HEADALIGN_X86_DISPATCH
#define HEADALIGN_SIMD_BIDIAGONAL 1
#else
#define HEADALIGN_SIMD_BIDIAGONAL 0
#endif

namespace headalign {
namespace detail {

/// Number of matrices reduced together for scalar S (1: no SIMD path for S in this build).
template <class S>
constexpr int simd_bidiagonal_width() {
#if HEADALIGN_SIMD_BIDIAGONAL
  if (std::is_same<S, double>::value) return 4;
  if (std::is_same<S, float>::value) return 8;
#endif
  return 1;
}

#if HEADALIGN_SIMD_BIDIAGONAL

/// Whether this CPU runs the AVX2 + FMA kernels (checked once).
inline bool simd_bidiagonal_available() { return cpu_has_avx2_fma(); }

/// W = 32 / sizeof(S) lanes of S in one 256-bit register. The alignment is explicit: without
/// -mavx GCC gives such types 16-byte alignment, while the AVX2 kernels use aligned loads.
template <class S>
struct SimdLanes {
  typedef S type __attribute__((vector_size(32), aligned(32)));
};

/// Householder reflector H = I − τ v vᵀ (v₀ = 1) with H·(α, x) = (β, 0), lane by lane, as LAPACK
/// ?larfg: β = −sign(α)·‖(α, x)‖, τ = (β − α)/β, v = x/(α − β); τ = 0 (H = I) and β = α when
/// x = 0. @p xnorm2 is ‖x‖². Returns β, τ and the scale 1/(α − β) of x.
template <class S, class V = typename SimdLanes<S>::type>
__attribute__((always_inline)) inline void householder_lanes(const V& alpha, const V& xnorm2, V& beta, V& tau,
                                                             V& scale) {
  const V zero = alpha - alpha;
  V norm;
  for (unsigned l = 0; l < sizeof(V) / sizeof(S); ++l) norm[l] = std::sqrt(alpha[l] * alpha[l] + xnorm2[l]);
  const V b = alpha >= zero ? -norm : norm;
  const auto reflect = xnorm2 > zero;
  tau = reflect ? (b - alpha) / b : zero;
  scale = reflect ? (zero + S(1)) / (alpha - b) : zero;
  beta = reflect ? b : alpha;
}

/// Upper-bidiagonal reduction A = Q B Pᵀ of W interleaved n × n matrices (destroys @p a):
/// @p d (n) and @p e (n − 1) receive B's diagonal and superdiagonal, @p flips the number of
/// non-trivial reflectors (each has determinant −1), all per lane. @p z is n lanes of scratch.
/// Each step k: the left reflector of column k is applied to the trailing columns, fused with
/// the previous step's right reflector (one pass over each column while it is in L1); then the
/// right reflector of row k and z = τ·A u for the next step.
template <class S, class V = typename SimdLanes<S>::type>
__attribute__((always_inline)) inline void bidiagonalize_lanes(V* a, int n, V* d, V* e, V* z, V& flips) {
  auto col = [&](int j) { return a + static_cast<std::ptrdiff_t>(j) * n; };
  const V zero = {};
  const V one = zero + S(1);
  flips = zero;
  bool pending = false;  // z and row k−1's u hold a right reflector not yet applied to rows ≥ k
  for (int k = 0; k < n; ++k) {
    V* ck = col(k);
    if (pending)
      for (int i = k; i < n; ++i) ck[i] -= z[i];  // u_k = 1
    V x2a = zero, x2b = zero;
    int i = k + 1;
    for (; i + 1 < n; i += 2) {
      x2a += ck[i] * ck[i];
      x2b += ck[i + 1] * ck[i + 1];
    }
    if (i < n) x2a += ck[i] * ck[i];
    V beta, tau, scale;
    householder_lanes<S>(ck[k], x2a + x2b, beta, tau, scale);
    flips += tau != zero ? one : zero;
    d[k] = beta;
    for (i = k + 1; i < n; ++i) ck[i] *= scale;  // v below the diagonal; v_k = 1
    for (int j = k + 1; j < n; ++j) {
      V* cj = col(j);
      V w0 = zero, w1 = zero, w2 = zero, w3 = zero;
      if (pending) {
        const V uj = col(j)[k - 1];  // row k−1 holds u
        cj[k] -= z[k] * uj;
        for (i = k + 1; i + 3 < n; i += 4) {
          const V c0 = cj[i] - z[i] * uj, c1 = cj[i + 1] - z[i + 1] * uj;
          const V c2 = cj[i + 2] - z[i + 2] * uj, c3 = cj[i + 3] - z[i + 3] * uj;
          cj[i] = c0;
          cj[i + 1] = c1;
          cj[i + 2] = c2;
          cj[i + 3] = c3;
          w0 += ck[i] * c0;
          w1 += ck[i + 1] * c1;
          w2 += ck[i + 2] * c2;
          w3 += ck[i + 3] * c3;
        }
        for (; i < n; ++i) {
          const V c0 = cj[i] - z[i] * uj;
          cj[i] = c0;
          w0 += ck[i] * c0;
        }
      } else {
        for (i = k + 1; i + 3 < n; i += 4) {
          w0 += ck[i] * cj[i];
          w1 += ck[i + 1] * cj[i + 1];
          w2 += ck[i + 2] * cj[i + 2];
          w3 += ck[i + 3] * cj[i + 3];
        }
        for (; i < n; ++i) w0 += ck[i] * cj[i];
      }
      const V w = (cj[k] + ((w0 + w1) + (w2 + w3))) * tau;
      cj[k] -= w;
      for (i = k + 1; i < n; ++i) cj[i] -= ck[i] * w;
    }
    pending = false;
    if (k + 1 >= n) break;
    // Right reflector of row k, columns k+1 … n−1; u is stored in row k (u_{k+1} = 1).
    V x2 = zero;
    for (int j = k + 2; j < n; ++j) x2 += col(j)[k] * col(j)[k];
    householder_lanes<S>(col(k + 1)[k], x2, beta, tau, scale);
    flips += tau != zero ? one : zero;
    e[k] = beta;
    for (int j = k + 2; j < n; ++j) col(j)[k] *= scale;
    // z = τ · A[k+1:, k+1:] u, four columns per pass over z.
    const V* c1 = col(k + 1);
    for (i = k + 1; i < n; ++i) z[i] = c1[i];
    int j = k + 2;
    for (; j + 3 < n; j += 4) {
      const V *p0 = col(j), *p1 = col(j + 1), *p2 = col(j + 2), *p3 = col(j + 3);
      const V u0 = p0[k], u1 = p1[k], u2 = p2[k], u3 = p3[k];
      for (i = k + 1; i < n; ++i) z[i] += p0[i] * u0 + p1[i] * u1 + p2[i] * u2 + p3[i] * u3;
    }
    for (; j < n; ++j) {
      const V* p0 = col(j);
      const V u0 = p0[k];
      for (i = k + 1; i < n; ++i) z[i] += p0[i] * u0;
    }
    for (i = k + 1; i < n; ++i) z[i] *= tau;
    pending = true;
  }
}

/// bidiagonalize_lanes() compiled for AVX2 + FMA (callers check simd_bidiagonal_available()).
template <class S>
__attribute__((target("avx2,fma"))) inline void bidiagonalize_avx2(typename SimdLanes<S>::type* a, int n,
                                                                   typename SimdLanes<S>::type* d,
                                                                   typename SimdLanes<S>::type* e,
                                                                   typename SimdLanes<S>::type* z,
                                                                   typename SimdLanes<S>::type& flips) {
  bidiagonalize_lanes<S>(a, n, d, e, z, flips);
}

inline lapack_int bdsqr_values(lapack_int n, double* d, double* e, double* work) {
  return LAPACKE_dbdsqr_work(LAPACK_COL_MAJOR, 'U', n, 0, 0, 0, d, e, nullptr, 1, nullptr, 1, nullptr, 1,
                             work);
}
inline lapack_int bdsqr_values(lapack_int n, float* d, float* e, float* work) {
  return LAPACKE_sbdsqr_work(LAPACK_COL_MAJOR, 'U', n, 0, 0, 0, d, e, nullptr, 1, nullptr, 1, nullptr, 1,
                             work);
}

/// Singular values of up to W = simd_bidiagonal_width<S>() square n × n matrices at once.
///
/// Matrix l (l < @p count) is column-major at @p blocks[l] with leading dimension @p ld and must
/// be finite. Each is scaled by a power of two (exact; no squares overflow or underflow) before
/// the reduction. On success @p sigma[l] holds matrix l's n singular values, descending, and
/// @p det_sign[l] the sign of its determinant (0 when B has a zero on its diagonal) from the
/// reflector count and B's diagonal. Returns false — and the caller takes the one-matrix path —
/// when the CPU lacks AVX2/FMA or ?bdsqr did not converge for some matrix.
template <class S>
bool simd_singular_values(const S* const* blocks, int count, Index n, Index ld, std::vector<Vector<S>>& sigma,
                          std::vector<int>& det_sign) {
  constexpr int width = simd_bidiagonal_width<S>();
  static_assert(width > 1, "simd_singular_values: no SIMD path for this scalar");
  using V = typename SimdLanes<S>::type;
  if (!simd_bidiagonal_available() || count < 1 || count > width || n < 1) return false;
  const auto un = static_cast<std::size_t>(n);
  // One buffer for A, d, e and z, aligned by hand (std::allocator ignores the type's alignment).
  std::vector<S> storage((un * un + 3 * un) * static_cast<std::size_t>(width) +
                         static_cast<std::size_t>(width));
  V* const a =
      reinterpret_cast<V*>((reinterpret_cast<std::uintptr_t>(storage.data()) + 31) & ~std::uintptr_t(31));
  V* const d = a + un * un;
  V* const e = d + un;
  V* const z = e + un;
  int exponent[width] = {};
  for (int l = 0; l < width; ++l) {
    if (l >= count) {  // padding lanes: zero matrices
      for (std::size_t t = 0; t < un * un; ++t) a[t][l] = S(0);
      continue;
    }
    const S* m = blocks[l];
    S largest = 0;
    for (Index j = 0; j < n; ++j)
      for (Index i = 0; i < n; ++i) largest = std::max(largest, std::abs(m[i + j * ld]));
    const PowerOfTwo<S> scale = power_of_two(largest);
    exponent[l] = scale.exponent;
    const S s1 = scale.down[0], s2 = scale.down[1];
    for (Index j = 0; j < n; ++j)
      for (Index i = 0; i < n; ++i) a[static_cast<std::size_t>(i + j * n)][l] = m[i + j * ld] * s1 * s2;
  }
  V flips;
  bidiagonalize_avx2<S>(a, static_cast<int>(n), d, e, z, flips);
  sigma.resize(static_cast<std::size_t>(count));
  det_sign.resize(static_cast<std::size_t>(count));
  Vector<S> diag(n), super(std::max<Index>(n - 1, 1)), work(4 * n);
  for (int l = 0; l < count; ++l) {
    int sign = static_cast<long long>(flips[l]) % 2 ? -1 : 1;
    for (Index i = 0; i < n; ++i) {
      diag(i) = d[static_cast<std::size_t>(i)][l];
      if (i + 1 < n) super(i) = e[static_cast<std::size_t>(i)][l];
      if (diag(i) < S(0)) sign = -sign;
      if (diag(i) == S(0)) sign = 0;
    }
    if (bdsqr_values(static_cast<lapack_int>(n), diag.data(), super.data(), work.data()) != 0) return false;
    auto& s = sigma[static_cast<std::size_t>(l)];
    s.resize(n);
    for (Index i = 0; i < n; ++i) s(i) = std::ldexp(diag(i), exponent[l]);
    det_sign[static_cast<std::size_t>(l)] = sign;
  }
  return true;
}

#endif  // HEADALIGN_SIMD_BIDIAGONAL

}  // namespace detail
}  // namespace headalign

#endif  // HEADALIGN_DETAIL_SIMD_BIDIAGONAL_HPP
