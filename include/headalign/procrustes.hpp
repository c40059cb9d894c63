/// @file procrustes.hpp
/// @brief Orthogonal Procrustes problems: the alignment of one attention head onto another.
///
/// Every solver here maximises \f$ \mathrm{tr}(R^\top M) \f$ over the set of matrices R that an
/// `Alignment` allows. With \f$ M = A^\top B \f$ this is \f$ \arg\min_R \|A R - B\|_F \f$, the
/// alignment of head activations A onto B (Sec. 3.2 of arXiv 2412.20677). For the full orthogonal
/// group the answer is the polar factor \f$ R = U V^\top \f$ of \f$ M = U \Sigma V^\top \f$ with
/// score \f$ \|M\|_* = \sum_i \sigma_i \f$ (Schönemann 1966).
#ifndef HEADALIGN_PROCRUSTES_HPP
#define HEADALIGN_PROCRUSTES_HPP

#include "config.hpp"
#include "detail/blas.hpp"
#include "detail/numeric.hpp"
#include "rope.hpp"

#include <Eigen/LU>
#include <Eigen/SVD>

#include <cmath>
#include <type_traits>
#include <vector>

// Eigen's BDCSVD adds about a minute of compile time per translation unit and scalar type (g++ 12,
// -O2), for a solver that is slower than gesdd and than the Newton iteration at head sizes; it is
// compiled only on request.
#ifdef HEADALIGN_ENABLE_BDCSVD
#define HEADALIGN_HAS_BDCSVD 1
#else
#define HEADALIGN_HAS_BDCSVD 0
#endif

namespace headalign {

/// @brief The set of transforms a head may be aligned with.
enum class Alignment {
  None,        ///< identity only: the plain mean-pool GQA baseline
  Orthogonal,  ///< any orthogonal R (values, outputs, keys of models without RoPE)
  Rotation,    ///< orthogonal with det R = +1
  Rope         ///< one 2×2 rotation per RoPE plane (commutes with RoPE); any orthogonal R on non-rotary dims
};

/// @brief How the polar factor \f$ U V^\top \f$ of a square matrix is computed.
enum class PolarMethod {
  /// With LAPACKE: Newton on LAPACK LU inverses for well-conditioned M (1-norm condition estimate
  /// ≤ 2n), Gesdd otherwise; without LAPACKE: Newton (the fastest measured; see README)
  Auto,
  JacobiSvd,  ///< Eigen::JacobiSVD (two-sided Jacobi: most accurate, slowest)
  BdcSvd,     ///< Eigen::BDCSVD (divide and conquer); needs HEADALIGN_ENABLE_BDCSVD, see below
  Gesdd,      ///< LAPACK ?gesdd through LAPACKE (needs HEADALIGN_USE_LAPACKE, else falls back to JacobiSvd)
  Newton  ///< scaled Newton iteration X ← (ζX + ζ⁻¹X⁻ᵀ)/2; falls back to an SVD when M is ill-conditioned
};

/// @brief Options of the Procrustes solvers.
struct ProcrustesOptions {
  PolarMethod method = PolarMethod::Auto;
};

/// @brief Solution of a Procrustes problem: the transform and its score \f$ \mathrm{tr}(R^\top M) \f$.
template <class S>
struct ProcrustesResult {
  Matrix<S> rotation;
  S score;
};

namespace detail {

inline PolarMethod resolve_method(PolarMethod m, bool lapack_ok) {
  if (m == PolarMethod::Auto) return lapack_ok ? PolarMethod::Gesdd : PolarMethod::Newton;
  if (m == PolarMethod::Gesdd && !lapack_ok) return PolarMethod::JacobiSvd;
  HEADALIGN_CHECK(m != PolarMethod::BdcSvd || HEADALIGN_HAS_BDCSVD,
                  "PolarMethod::BdcSvd needs HEADALIGN_ENABLE_BDCSVD defined before including headalign");
  return m;
}

/// The SVD used where only an SVD will do (scores, and Newton's fallback for ill-conditioned M).
inline PolarMethod svd_method(PolarMethod m, bool lapack_ok) {
  m = resolve_method(m, lapack_ok);
  return m == PolarMethod::Newton ? (lapack_ok ? PolarMethod::Gesdd : PolarMethod::JacobiSvd) : m;
}

/// Full SVD M = U diag(sigma) Vᵀ of a square matrix, sigma descending.
template <class S>
void svd(const Matrix<S>& m, [[maybe_unused]] PolarMethod method, Matrix<S>& u, Vector<S>& sigma,
         Matrix<S>& v) {
#ifdef HEADALIGN_USE_LAPACKE
  if constexpr (lapack_scalar<S>()) {
    if (method == PolarMethod::Gesdd) {
      const Index n = m.rows();
      Matrix<S> a = m, vt(n, n);
      u.resize(n, n);
      sigma.resize(n);
      if (gesdd('A', static_cast<lapack_int>(n), a.data(), sigma.data(), u.data(), vt.data()) == 0) {
        v = vt.transpose();
        return;
      }
      // gesdd did not converge (info > 0): fall through to the Jacobi SVD, which always does.
      method = PolarMethod::JacobiSvd;
    }
  }
#endif
#if HEADALIGN_HAS_BDCSVD
  if (method == PolarMethod::BdcSvd) {
    Eigen::BDCSVD<Matrix<S>> solver(m, Eigen::ComputeFullU | Eigen::ComputeFullV);
    u = solver.matrixU();
    v = solver.matrixV();
    sigma = solver.singularValues();
    return;
  }
#endif
  Eigen::JacobiSVD<Matrix<S>> solver(m, Eigen::ComputeFullU | Eigen::ComputeFullV);
  u = solver.matrixU();
  v = solver.matrixV();
  sigma = solver.singularValues();
}

/// Singular values of a square matrix only (no vectors), descending.
template <class S>
Vector<S> singular_values(const Matrix<S>& m, [[maybe_unused]] PolarMethod method) {
#ifdef HEADALIGN_USE_LAPACKE
  if constexpr (lapack_scalar<S>()) {
    if (method == PolarMethod::Gesdd) {
      const Index n = m.rows();
      Matrix<S> a = m;
      Vector<S> sigma(n);
      S dummy = 0;
      if (gesdd('N', static_cast<lapack_int>(n), a.data(), sigma.data(), &dummy, &dummy) == 0) return sigma;
      method = PolarMethod::JacobiSvd;
    }
  }
#endif
#if HEADALIGN_HAS_BDCSVD
  if (method == PolarMethod::BdcSvd) return Eigen::BDCSVD<Matrix<S>>(m).singularValues();
#endif
  return Eigen::JacobiSVD<Matrix<S>>(m).singularValues();
}

/// Sign (−1, 0, +1) of det(M) from its LU factorisation, without forming the (over/underflowing) product.
template <class S>
int lu_det_sign(const Eigen::PartialPivLU<Matrix<S>>& lu) {
  int sign = static_cast<int>(lu.permutationP().determinant());
  const auto& f = lu.matrixLU();
  for (Index i = 0; i < f.rows(); ++i) {
    if (f(i, i) == S(0)) return 0;
    if (f(i, i) < S(0)) sign = -sign;
  }
  return sign;
}

/// Sign (−1, 0, +1) of det(M).
template <class S>
int det_sign(const Matrix<S>& m) {
  if (m.size() == 0) return 1;
  return lu_det_sign<S>(Eigen::PartialPivLU<Matrix<S>>(m));
}

/// The scaled Newton iteration for the polar factor (Higham, "Functions of Matrices", Alg. 8.20)
/// shared by newton_polar() and newton_polar_lapack(): from X = @p x, X ← (ζX + ζ⁻¹X⁻ᵀ)/2 with
/// the (1,∞)-norm scaling ζ while δ = ‖X_new − X‖_F/‖X_new‖_F ≥ 1e-2 (scaling only helps far from
/// convergence), unscaled after. Quadratic convergence: it stops when δ ≤ 10nε, or one step after
/// δ ≤ √(nε), which is then accurate to about nε. @p invert(X, X⁻¹) computes the inverse (false:
/// give up). Returns false on a non-finite iterate or without convergence in @p max_steps.
template <class S, class Invert>
bool newton_iterate(Matrix<S> x, Invert&& invert, int max_steps, Matrix<S>& r) {
  const S eps = Eigen::NumTraits<S>::epsilon();
  const Index n = x.rows();
  Matrix<S> xinv(n, n), next(n, n);
  auto norm1_inf = [](const Matrix<S>& a) {
    return a.cwiseAbs().colwise().sum().maxCoeff() * a.cwiseAbs().rowwise().sum().maxCoeff();
  };
  bool scaling = true;
  for (int it = 0; it < max_steps; ++it) {
    if (!invert(x, xinv)) return false;
    S zeta = 1;
    if (scaling) {
      zeta = std::pow(norm1_inf(xinv) / norm1_inf(x), S(0.25));
      if (!std::isfinite(static_cast<double>(zeta)) || zeta <= S(0)) return false;
    }
    next = S(0.5) * (zeta * x + xinv.transpose() / zeta);
    const S delta = (next - x).norm() / next.norm();
    x.swap(next);
    if (!all_finite(x)) return false;
    if (delta < S(1e-2)) scaling = false;
    if (delta <= S(10) * static_cast<S>(n) * eps) {
      r = std::move(x);
      return true;
    }
    if (delta <= std::sqrt(static_cast<S>(n) * eps)) {
      if (!invert(x, xinv)) return false;
      r = S(0.5) * (x + xinv.transpose());
      return all_finite(r);
    }
  }
  return false;
}

/// Scaled Newton iteration (newton_iterate()) for the polar factor of a nonsingular M, on Eigen
/// LU inverses. Returns false when M is too ill-conditioned for the iteration to be accurate
/// (reciprocal condition estimate below n·ε: there the LU inverse, and so the iteration, loses
/// all accuracy) or it fails to converge; the caller then uses an SVD.
template <class S>
bool newton_polar(const Matrix<S>& m, Matrix<S>& r, int& det_sign_out) {
  const S eps = Eigen::NumTraits<S>::epsilon();
  Eigen::PartialPivLU<Matrix<S>> lu(m);
  if (!(lu.rcond() > static_cast<S>(m.rows()) * eps)) return false;
  det_sign_out = lu_det_sign<S>(lu);
  bool first = true;  // the first inverse is M's, already factored
  auto invert = [&](const Matrix<S>& x, Matrix<S>& xinv) {
    if (!first) lu.compute(x);
    first = false;
    xinv = lu.inverse();
    return true;
  };
  return newton_iterate<S>(m, invert, 40, r);
}

#ifdef HEADALIGN_USE_LAPACKE
/// `Auto`'s fast path with LAPACK: newton_iterate() on LAPACK LU inverses (?getrf/?getri),
/// taken only for well-conditioned M — 1-norm condition estimate (?gecon) at most 2n, which the
/// estimate exceeds already near κ₂ ≈ 3 at n = 128 — where it settles in 3–5 steps and beats
/// ?gesdd + GEMM at head sizes. Returns false, and the caller takes ?gesdd, for anything else: a
/// worse condition, det M < 0 when @p proper_rotation, or no convergence within 10 steps.
template <class S>
bool newton_polar_lapack(const Matrix<S>& m, bool proper_rotation, Matrix<S>& r) {
  const Index n = m.rows();
  const auto ln = static_cast<lapack_int>(n);
  Matrix<S> lu = m;
  std::vector<lapack_int> piv(static_cast<std::size_t>(n));
  if (getrf(ln, lu.data(), piv.data()) != 0) return false;  // info > 0: singular
  S rcond = 0;
  if (gecon(ln, lu.data(), m.cwiseAbs().colwise().sum().maxCoeff(), &rcond) != 0 ||
      !(rcond * S(2) * static_cast<S>(n) >= S(1)))
    return false;
  if (proper_rotation) {
    int sign = 1;
    for (Index i = 0; i < n; ++i) {
      if (piv[static_cast<std::size_t>(i)] != static_cast<lapack_int>(i + 1)) sign = -sign;
      if (lu(i, i) < S(0)) sign = -sign;
    }
    if (sign < 0) return false;  // the best rotation flips σ_min: the SVD's job
  }
  bool first = true;  // the first inverse is M's, already factored
  auto invert = [&](const Matrix<S>& x, Matrix<S>& xinv) {
    if (first) {
      first = false;
      xinv.swap(lu);
    } else {
      xinv = x;
      if (getrf(ln, xinv.data(), piv.data()) != 0) return false;
    }
    return getri(ln, xinv.data(), piv.data()) == 0;
  };
  return newton_iterate<S>(m, invert, 10, r);
}
#endif

/// Polar factor of M (optionally restricted to det = +1) and its score tr(Rᵀ M).
template <class S>
ProcrustesResult<S> polar(const Matrix<S>& m, bool proper_rotation, PolarMethod method) {
  const Index n = m.rows();
  ProcrustesResult<S> result{Matrix<S>::Identity(n, n), S(0)};
  if (n == 0) return result;
#ifdef HEADALIGN_USE_LAPACKE
  if constexpr (lapack_scalar<S>()) {
    if (method == PolarMethod::Auto && n >= 16) {
      Matrix<S> r;
      if (newton_polar_lapack(m, proper_rotation, r)) {
        result.score = r.cwiseProduct(m).sum();
        result.rotation = std::move(r);
        return result;
      }
    }
  }
#endif
  method = resolve_method(method, lapack_scalar<S>());
  if (method == PolarMethod::Newton) {
    int sign = 1;
    Matrix<S> r;
    if (newton_polar(m, r, sign) && (!proper_rotation || sign > 0)) {
      result.score = r.cwiseProduct(m).sum();
      result.rotation = std::move(r);
      return result;
    }
    method = svd_method(method, lapack_scalar<S>());
  }
  Matrix<S> u, v;
  Vector<S> sigma;
  svd(m, method, u, sigma, v);
  S score = sigma.sum();
  if (proper_rotation && det_sign(u) * det_sign(v) < 0) {
    // The best rotation flips the direction of the smallest singular value (Umeyama 1991).
    u.col(n - 1) = -u.col(n - 1);
    score -= S(2) * sigma(n - 1);
  }
  gemm<S>(u, Matrix<S>(v.transpose()), S(0), result.rotation);
  result.score = score;
  return result;
}

template <class Derived>
Matrix<typename Derived::Scalar> checked_square(const Eigen::MatrixBase<Derived>& m, const char* what) {
  using S = typename Derived::Scalar;
  static_assert(std::is_floating_point<S>::value, "headalign: Procrustes needs a floating-point scalar");
  HEADALIGN_CHECK(m.rows() == m.cols(),
                  what << " must be square (d × d), got " << m.rows() << " × " << m.cols());
  Matrix<S> out = m;
  check_finite(out, what);
  return out;
}

/// Scales @p m in place by a power of two so that its largest magnitude lies in [0.5, 1), and
/// returns the exponent e with m_original = 2^e · m. Exact (powers of two), and it changes no
/// transform: R depends only on the direction of M. It keeps the solvers away from underflow
/// (subnormal entries lose the bits that make R orthogonal) and overflow (LU inverses, squares).
template <class S>
int normalize_exponent(Matrix<S>& m) {
  const S largest = m.size() ? m.cwiseAbs().maxCoeff() : S(0);
  if (!(largest > S(0))) return 0;
  const PowerOfTwo<S> scale = power_of_two(largest);
  m *= scale.down[0];
  m *= scale.down[1];
  return scale.exponent;
}

/// The RoPE closed form (see procrustes()) read straight from M, without copying it: M is
/// checked like checked_square(), and the entries each plane reads are scaled by the same power
/// of two as normalize_exponent() would scale all of M, so the results are the same. With
/// @p with_rotation false only the score is computed (procrustes_score()).
template <class S>
ProcrustesResult<S> rope_solution(const Eigen::Ref<const Matrix<S>>& m, const RopeSpec& rope,
                                  PolarMethod method, bool with_rotation) {
  HEADALIGN_CHECK(m.rows() == m.cols(),
                  "Procrustes matrix M must be square (d × d), got " << m.rows() << " × " << m.cols());
  check_finite(m, "Procrustes matrix M");
  const Index d = m.rows();
  ProcrustesResult<S> result{with_rotation ? Matrix<S>(Matrix<S>::Identity(d, d)) : Matrix<S>(), S(0)};
  if (d == 0 && !with_rotation) return result;
  const Index r = rotary_dims(rope, d);
  const PowerOfTwo<S> scale = power_of_two(d ? m.cwiseAbs().maxCoeff() : S(0));  // as normalize_exponent()
  const int e = scale.exponent;
  const S s1 = scale.down[0], s2 = scale.down[1];
  auto at = [&](Index i, Index j) { return m(i, j) * s1 * s2; };
  for (const auto& plane : rope_planes(rope, d)) {
    const Index a = plane.first, b = plane.second;
    const S c0 = at(a, a) + at(b, b), s0 = at(b, a) - at(a, b);
    const S h = std::hypot(c0, s0);
    if (with_rotation) {
      const S c = h > S(0) ? c0 / h : S(1), s = h > S(0) ? s0 / h : S(0);
      result.rotation(a, a) = c;
      result.rotation(a, b) = -s;
      result.rotation(b, a) = s;
      result.rotation(b, b) = c;
    }
    result.score += h;
  }
  if (r < d) {
    Matrix<S> rest = m.bottomRightCorner(d - r, d - r);
    rest *= s1;
    rest *= s2;
    if (with_rotation) {
      auto solved = polar<S>(rest, false, method);
      result.rotation.bottomRightCorner(d - r, d - r) = solved.rotation;
      result.score += solved.score;
    } else {
      result.score += singular_values<S>(rest, svd_method(method, lapack_scalar<S>())).sum();
    }
  }
  result.score = std::ldexp(result.score, e);
  return result;
}

}  // namespace detail

/// @brief The transform R of the set that @p alignment allows maximising \f$ \mathrm{tr}(R^\top M) \f$.
///
/// - `None`: R = I, score = tr M.
/// - `Orthogonal`: R = U Vᵀ, score = Σσ (Eq. (4) of arXiv 2412.20677 solved by SVD).
/// - `Rotation`: as Orthogonal, with U's last column negated when det(U Vᵀ) < 0; score = Σσ − 2σ_min then.
/// - `Rope`: per RoPE plane (a, b) with \f$ m = M_{\{a,b\},\{a,b\}} \f$, the 2×2 rotation by
///   \f$ θ = \mathrm{atan2}(m_{10} - m_{01}, m_{00} + m_{11}) \f$, score
///   \f$ \sum_p \mathrm{hypot}(m_{00}+m_{11}, m_{10}-m_{01}) \f$; non-rotary dimensions get the
///   orthogonal Procrustes solution of their block. Such R commute with RoPE, so
///   RoPE_m(Rᵀq)·RoPE_n(Rᵀk) = RoPE_m(q)·RoPE_n(k).
///
/// With M = Aᵀ B (A, B: n × d activations of two heads) the result aligns A onto B: A R ≈ B.
/// @param m square d × d matrix (typically a cross-Gram block \f$ X_i^\top X_j \f$)
/// @param alignment the feasible set
/// @param rope pairing and rotary dimensions (only for `Alignment::Rope`)
/// @param options polar method
/// @throws invalid_argument for non-square or non-finite M, or an invalid RopeSpec
template <class Derived>
ProcrustesResult<typename Derived::Scalar> procrustes(const Eigen::MatrixBase<Derived>& m,
                                                      Alignment alignment = Alignment::Orthogonal,
                                                      RopeSpec rope = {}, ProcrustesOptions options = {}) {
  using S = typename Derived::Scalar;
  static_assert(std::is_floating_point<S>::value, "headalign: Procrustes needs a floating-point scalar");
  if (alignment == Alignment::Rope) return detail::rope_solution<S>(m, rope, options.method, true);
  Matrix<S> mm = detail::checked_square(m, "Procrustes matrix M");
  const Index d = mm.rows();
  if (alignment == Alignment::None) return {Matrix<S>::Identity(d, d), mm.trace()};
  const int e = detail::normalize_exponent(mm);  // M = 2^e · mm: same R, score × 2^e
  auto unscaled = [e](ProcrustesResult<S> res) {
    res.score = std::ldexp(res.score, e);
    return res;
  };
  switch (alignment) {
    case Alignment::None:  // returned above
    case Alignment::Orthogonal:
      return unscaled(detail::polar(mm, false, options.method));
    case Alignment::Rotation:
      return unscaled(detail::polar(mm, true, options.method));
    case Alignment::Rope:  // returned above
      break;
  }
  return {};
}

/// @brief The optimal score \f$ \max_R \mathrm{tr}(R^\top M) \f$ of procrustes() without forming R.
///
/// Orthogonal: the nuclear norm Σσ (singular values only). Rotation: Σσ, minus 2σ_min when
/// det M < 0 (det(UVᵀ) has the sign of det M). Rope: Σ_p hypot(m00+m11, m10−m01) plus the
/// nuclear norm of the non-rotary block. None: tr M. When the polar method resolves to `Newton`
/// (`Auto` without LAPACKE), Orthogonal and Rotation scores are ⟨R, M⟩ of the Newton polar
/// factor instead (the same value to round-off; 4–6× faster than Eigen's Jacobi SVD at d = 128).
/// @throws invalid_argument as procrustes()
template <class Derived>
typename Derived::Scalar procrustes_score(const Eigen::MatrixBase<Derived>& m, Alignment alignment,
                                          RopeSpec rope = {}, ProcrustesOptions options = {}) {
  using S = typename Derived::Scalar;
  static_assert(std::is_floating_point<S>::value, "headalign: Procrustes needs a floating-point scalar");
  if (alignment == Alignment::Rope) return detail::rope_solution<S>(m, rope, options.method, false).score;
  Matrix<S> mm = detail::checked_square(m, "Procrustes matrix M");
  const Index d = mm.rows();
  if (d == 0) return S(0);
  if (alignment == Alignment::None) return mm.trace();
  const int e = detail::normalize_exponent(mm);  // as in procrustes()
  const PolarMethod method = detail::svd_method(options.method, detail::lapack_scalar<S>());
  // Without LAPACK the Newton polar factor R is several times faster than Eigen's SVDs, and
  // tr(RᵀM) is stationary in R at the optimum, so its error is second order in R's.
  // polar() takes the SVD itself for near-singular M and for det M < 0 under Rotation.
  const bool newton =
      detail::resolve_method(options.method, detail::lapack_scalar<S>()) == PolarMethod::Newton;
  if (newton && (alignment == Alignment::Orthogonal || alignment == Alignment::Rotation))
    return std::ldexp(detail::polar(mm, alignment == Alignment::Rotation, PolarMethod::Newton).score, e);
  switch (alignment) {
    case Alignment::None:  // returned above
    case Alignment::Orthogonal:
      return std::ldexp(detail::singular_values(mm, method).sum(), e);
    case Alignment::Rotation: {
      const Vector<S> sigma = detail::singular_values(mm, method);
      return std::ldexp(detail::det_sign(mm) < 0 ? sigma.sum() - S(2) * sigma(d - 1) : sigma.sum(), e);
    }
    case Alignment::Rope:  // returned above
      break;
  }
  return S(0);
}

/// @brief SciPy's `orthogonal_procrustes(A, B)`: R = argmin ‖A R − B‖_F over orthogonal R.
///
/// R = U Vᵀ from the SVD of \f$ A^\top B \f$; score ("scale" in SciPy) = Σσ(AᵀB).
/// @param a n × d
/// @param b n × d
/// @throws invalid_argument when the shapes differ, are empty, or hold NaN/Inf
template <class DA, class DB>
ProcrustesResult<typename DA::Scalar> orthogonal_procrustes(const Eigen::MatrixBase<DA>& a,
                                                            const Eigen::MatrixBase<DB>& b,
                                                            ProcrustesOptions options = {}) {
  using S = typename DA::Scalar;
  static_assert(std::is_same<S, typename DB::Scalar>::value, "headalign: A and B need the same scalar type");
  HEADALIGN_CHECK(a.rows() == b.rows() && a.cols() == b.cols(),
                  "orthogonal_procrustes: A (" << a.rows() << " × " << a.cols() << ") and B (" << b.rows()
                                               << " × " << b.cols() << ") must have the same shape");
  HEADALIGN_CHECK(a.size() > 0, "orthogonal_procrustes: A and B are empty");
  detail::check_finite(a, "orthogonal_procrustes: A");
  detail::check_finite(b, "orthogonal_procrustes: B");
  const Matrix<S> m = a.transpose() * b;
  return procrustes(m, Alignment::Orthogonal, {}, options);
}

}  // namespace headalign

/// Declares (with `extern`) or defines the explicit instantiations of the SVD-heavy internals for
/// float and double. Eigen's SVDs cost tens of seconds of compile time per translation unit; a
/// project with many units defines HEADALIGN_EXTERN_TEMPLATES for all of them and includes
/// <headalign/instantiate.hpp> in exactly one (with the same HEADALIGN_USE_LAPACKE /
/// HEADALIGN_ENABLE_BDCSVD settings everywhere).
#define HEADALIGN_PROCRUSTES_INSTANTIATIONS(EXTERN, S)                                                  \
  EXTERN template void headalign::detail::svd<S>(const Matrix<S>&, PolarMethod, Matrix<S>&, Vector<S>&, \
                                                 Matrix<S>&);                                           \
  EXTERN template Vector<S> headalign::detail::singular_values<S>(const Matrix<S>&, PolarMethod);       \
  EXTERN template int headalign::detail::det_sign<S>(const Matrix<S>&);                                 \
  EXTERN template bool headalign::detail::newton_polar<S>(const Matrix<S>&, Matrix<S>&, int&);          \
  EXTERN template ProcrustesResult<S> headalign::detail::polar<S>(const Matrix<S>&, bool, PolarMethod);

#if defined(HEADALIGN_EXTERN_TEMPLATES) && !defined(HEADALIGN_INSTANTIATE)
namespace headalign {
HEADALIGN_PROCRUSTES_INSTANTIATIONS(extern, float)
HEADALIGN_PROCRUSTES_INSTANTIATIONS(extern, double)
}  // namespace headalign
#endif

#endif  // HEADALIGN_PROCRUSTES_HPP
