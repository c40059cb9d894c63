/// @file hard_concrete.hpp
/// @brief Hard-concrete L0 gates (Louizos, Welling, Kingma 2018) and the reference
/// implementation's variant, element-wise over Eigen arrays of logits.
///
/// During fine-tuning every original KV head h mixes its own keys and values with its group's,
/// \f$ z_h K_h + (1 - z_h) K_{\mathrm{group}} \f$ (merge.hpp), and an L0 penalty drives the gates
/// z to 0 (Sec. 3.5 of arXiv 2412.20677). Gates are functions of a logit per gate (log α) and,
/// while training, of a uniform noise u; every function here also has its derivative with
/// respect to the logits, for a C++ training loop.
///
/// Textbook hard concrete ("Learning Sparse Neural Networks through L0 Regularization",
/// Louizos, Welling, Kingma, ICLR 2018, Eq. 10–13), with temperature β and stretch (γ, ζ):
/// \f$ s = \sigma((\log u - \log(1-u) + \log\alpha)/\beta) \f$,
/// \f$ z = \min(1, \max(0, s(\zeta-\gamma) + \gamma)) \f$,
/// \f$ P(z \ne 0) = \sigma(\log\alpha - \beta\log(-\gamma/\zeta)) \f$, and at test time
/// \f$ \hat z = \min(1, \max(0, \sigma(\log\alpha)(\zeta-\gamma) + \gamma)) \f$.
#ifndef HEADALIGN_HARD_CONCRETE_HPP
#define HEADALIGN_HARD_CONCRETE_HPP

#include "config.hpp"
#include "detail/numeric.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

namespace headalign {

/// @brief Parameters of the hard-concrete distribution (Louizos et al. 2018: β = 2/3, γ = −0.1, ζ = 1.1).
struct HardConcrete {
  double beta = 2.0 / 3.0;  ///< temperature β > 0
  double gamma = -0.1;      ///< lower stretch limit γ < 0
  double zeta = 1.1;        ///< upper stretch limit ζ > 1
};

namespace detail {

/// σ(x) = 1 / (1 + e^{−x}) without overflow for large |x|.
template <class S>
S sigmoid(S x) {
  if (x >= S(0)) return S(1) / (S(1) + std::exp(-x));
  const S e = std::exp(x);
  return e / (S(1) + e);
}

inline void check_hard_concrete(const HardConcrete& hc) {
  HEADALIGN_CHECK(hc.beta > 0 && hc.gamma < 0 && hc.zeta > 1 && std::isfinite(hc.beta) &&
                      std::isfinite(hc.gamma) && std::isfinite(hc.zeta),
                  "HardConcrete: need beta > 0, gamma < 0 < 1 < zeta (got beta = "
                      << hc.beta << ", gamma = " << hc.gamma << ", zeta = " << hc.zeta << ")");
}

template <class D>
void check_logits(const Eigen::ArrayBase<D>& a, const char* what) {
  HEADALIGN_CHECK(detail::all_finite(a), what << ": the logits contain NaN or Inf");
}

template <class D, class U>
void check_uniforms(const Eigen::ArrayBase<D>& a, const Eigen::ArrayBase<U>& u, const char* what) {
  HEADALIGN_CHECK(a.rows() == u.rows() && a.cols() == u.cols(), what << ": " << u.rows() << " × " << u.cols()
                                                                     << " uniforms for " << a.rows() << " × "
                                                                     << a.cols() << " logits");
  HEADALIGN_CHECK(((u.derived() > 0) && (u.derived() < 1)).all(),
                  what << ": uniforms must lie in the open interval (0, 1)");
}

}  // namespace detail

/// @brief \f$ P(z \ne 0) = \sigma(\log\alpha - \beta \log(-\gamma/\zeta)) \f$ per gate (Eq. 12).
template <class D>
typename D::PlainObject prob_nonzero(const HardConcrete& hc, const Eigen::ArrayBase<D>& log_alpha) {
  using S = typename D::Scalar;
  detail::check_hard_concrete(hc);
  detail::check_logits(log_alpha, "prob_nonzero");
  const S shift = static_cast<S>(hc.beta * std::log(-hc.gamma / hc.zeta));
  return log_alpha.unaryExpr([shift](S a) { return detail::sigmoid(a - shift); });
}

/// @brief \f$ \partial P(z \ne 0) / \partial \log\alpha = P(1 - P) \f$ per gate.
template <class D>
typename D::PlainObject prob_nonzero_grad(const HardConcrete& hc, const Eigen::ArrayBase<D>& log_alpha) {
  const typename D::PlainObject p = prob_nonzero(hc, log_alpha);
  return p * (1 - p);
}

/// @brief The expected L0 norm \f$ \sum P(z \ne 0) \f$ (the penalty of Eq. 12); its gradient is
/// prob_nonzero_grad().
template <class D>
typename D::Scalar expected_l0(const HardConcrete& hc, const Eigen::ArrayBase<D>& log_alpha) {
  return prob_nonzero(hc, log_alpha).sum();
}

/// @brief Training-time gates from given uniforms u ∈ (0, 1) (Eq. 10):
/// \f$ z = \min(1, \max(0, \sigma((\log u - \log(1-u) + \log\alpha)/\beta)(\zeta-\gamma) + \gamma)) \f$.
/// @throws invalid_argument for uniforms outside (0, 1), shapes that differ, non-finite logits
template <class D, class U>
typename D::PlainObject sample_gates(const HardConcrete& hc, const Eigen::ArrayBase<D>& log_alpha,
                                     const Eigen::ArrayBase<U>& uniform) {
  using S = typename D::Scalar;
  detail::check_hard_concrete(hc);
  detail::check_logits(log_alpha, "sample_gates");
  detail::check_uniforms(log_alpha, uniform, "sample_gates");
  const S beta = static_cast<S>(hc.beta), lo = static_cast<S>(hc.gamma),
          width = static_cast<S>(hc.zeta - hc.gamma);
  return log_alpha.binaryExpr(uniform.template cast<S>(), [=](S a, S u) {
    const S s = detail::sigmoid((std::log(u) - std::log1p(-u) + a) / beta);
    return std::min(S(1), std::max(S(0), s * width + lo));
  });
}

/// @brief \f$ \partial z / \partial \log\alpha \f$ of sample_gates(): \f$ (\zeta-\gamma)\,s(1-s)/\beta \f$
/// where the gate is strictly inside (0, 1), 0 where it is clipped.
template <class D, class U>
typename D::PlainObject sample_gates_grad(const HardConcrete& hc, const Eigen::ArrayBase<D>& log_alpha,
                                          const Eigen::ArrayBase<U>& uniform) {
  using S = typename D::Scalar;
  detail::check_hard_concrete(hc);
  detail::check_logits(log_alpha, "sample_gates_grad");
  detail::check_uniforms(log_alpha, uniform, "sample_gates_grad");
  const S beta = static_cast<S>(hc.beta), lo = static_cast<S>(hc.gamma),
          width = static_cast<S>(hc.zeta - hc.gamma);
  return log_alpha.binaryExpr(uniform.template cast<S>(), [=](S a, S u) {
    const S s = detail::sigmoid((std::log(u) - std::log1p(-u) + a) / beta);
    const S y = s * width + lo;
    return (y > S(0) && y < S(1)) ? width * s * (S(1) - s) / beta : S(0);
  });
}

/// @brief Test-time gates (Eq. 13): \f$ \hat z = \min(1, \max(0, \sigma(\log\alpha)(\zeta-\gamma) + \gamma))
/// \f$.
template <class D>
typename D::PlainObject deterministic_gates(const HardConcrete& hc, const Eigen::ArrayBase<D>& log_alpha) {
  using S = typename D::Scalar;
  detail::check_hard_concrete(hc);
  detail::check_logits(log_alpha, "deterministic_gates");
  const S lo = static_cast<S>(hc.gamma), width = static_cast<S>(hc.zeta - hc.gamma);
  return log_alpha.unaryExpr(
      [=](S a) { return std::min(S(1), std::max(S(0), detail::sigmoid(a) * width + lo)); });
}

/// @brief \f$ \partial \hat z / \partial \log\alpha = (\zeta-\gamma)\,\sigma(1-\sigma) \f$ inside (0, 1), 0
/// where clipped.
template <class D>
typename D::PlainObject deterministic_gates_grad(const HardConcrete& hc,
                                                 const Eigen::ArrayBase<D>& log_alpha) {
  using S = typename D::Scalar;
  detail::check_hard_concrete(hc);
  detail::check_logits(log_alpha, "deterministic_gates_grad");
  const S lo = static_cast<S>(hc.gamma), width = static_cast<S>(hc.zeta - hc.gamma);
  return log_alpha.unaryExpr([=](S a) {
    const S s = detail::sigmoid(a);
    const S y = s * width + lo;
    return (y > S(0) && y < S(1)) ? width * s * (S(1) - s) : S(0);
  });
}

// ---------------------------------------------------------------------------------------------
// The reference implementation's variant (REFERENCE.md §7; its L0 module descends from the
// Sheared-LLaMA / CoFi pruning code). Each gate has a parameter θ; the logit entering the
// sigmoid is a = θ / (α_s T) with scale α_s and temperature T, so θ lives on a small scale.
// ---------------------------------------------------------------------------------------------

/// @brief Constants of the reference's gates (its scripts' values as defaults).
struct ReferenceGates {
  double temperature = 1.0 / 3.0;  ///< T
  double scale = 1e-3;             ///< α_s: logit a = θ / (α_s T)
  double noise = 0.1;              ///< training noise u ~ U(0.5 − noise, 0.5 + noise)
  double stretch = 1.005;          ///< y ← (y − 0.5)·stretch + 0.5 before clipping to [0, 1]
  double logit_limit = 24;  ///< parameters are clamped so that |a| ≤ logit_limit (θ ∈ ±8 α_s at T = 1/3)
  double offset_gate = 0.995;  ///< P(z ≠ 0) = σ(a + T·logit(offset_gate))
  double epsilon = 1e-6;       ///< clamp of the probabilities, and the L2 term's offset
};

namespace detail {
inline void check_reference_gates(const ReferenceGates& r) {
  HEADALIGN_CHECK(
      r.temperature > 0 && r.scale > 0 && r.noise > 0 && r.noise < 0.5 && r.stretch > 0 &&
          r.logit_limit > 0 && r.offset_gate > 0 && r.offset_gate < 1 && r.epsilon >= 0 && r.epsilon < 0.5,
      "ReferenceGates: need temperature, scale, stretch, logit_limit > 0, noise and epsilon in (0, 0.5), "
      "offset_gate in (0, 1)");
}
}  // namespace detail

/// @brief The logits \f$ a = \theta / (\alpha_s T) \f$ of parameters θ.
template <class D>
typename D::PlainObject reference_logits(const ReferenceGates& r, const Eigen::ArrayBase<D>& theta) {
  using S = typename D::Scalar;
  detail::check_reference_gates(r);
  detail::check_logits(theta, "reference_logits");
  return theta * static_cast<S>(1.0 / (r.scale * r.temperature));
}

/// @brief The reference's initial parameter, logit 6 (gates ≈ 1): θ₀ = 6·T·α_s (it adds N(0, α_s/10) noise).
inline double reference_initial_parameter(const ReferenceGates& r) {
  detail::check_reference_gates(r);
  return 6.0 * r.temperature * r.scale;
}

/// @brief Clamps parameters to |a| ≤ logit_limit, i.e. θ ∈ [−L·T·α_s, L·T·α_s] (after every optimiser step).
template <class D>
typename D::PlainObject reference_clamp_parameters(const ReferenceGates& r,
                                                   const Eigen::ArrayBase<D>& theta) {
  using S = typename D::Scalar;
  detail::check_reference_gates(r);
  const S bound = static_cast<S>(r.logit_limit * r.temperature * r.scale);
  return theta.cwiseMax(-bound).cwiseMin(bound);
}

/// @brief Training gates of the reference: with \f$ u' = 0.5 + \mathrm{noise}\,(2u - 1) \f$ (u ∈ (0, 1)
/// given, so u' ~ U(0.5 − noise, 0.5 + noise)), \f$ y = \sigma(\log u' - \log(1-u') + a) \f$,
/// \f$ z = \mathrm{clip}_{[0,1]}((y - 0.5)\cdot\mathrm{stretch} + 0.5) \f$. No (γ, ζ) stretch is
/// applied (the reference defines those limits but does not use them when sampling).
template <class D, class U>
typename D::PlainObject reference_sample_gates(const ReferenceGates& r, const Eigen::ArrayBase<D>& theta,
                                               const Eigen::ArrayBase<U>& uniform) {
  using S = typename D::Scalar;
  detail::check_reference_gates(r);
  detail::check_logits(theta, "reference_sample_gates");
  detail::check_uniforms(theta, uniform, "reference_sample_gates");
  const S inv = static_cast<S>(1.0 / (r.scale * r.temperature)), noise = static_cast<S>(r.noise),
          stretch = static_cast<S>(r.stretch);
  return theta.binaryExpr(uniform.template cast<S>(), [=](S t, S u) {
    const S v = S(0.5) + noise * (S(2) * u - S(1));
    const S y = detail::sigmoid(std::log(v) - std::log1p(-v) + t * inv);
    return std::min(S(1), std::max(S(0), (y - S(0.5)) * stretch + S(0.5)));
  });
}

/// @brief \f$ \partial z / \partial \theta \f$ of reference_sample_gates() with the reference's
/// straight-through clipping (the clip is differentiated as the identity):
/// \f$ \mathrm{stretch}\cdot y(1-y) / (\alpha_s T) \f$. (The reference additionally clips the
/// incoming gradient to [−1, 1] at the clip.)
template <class D, class U>
typename D::PlainObject reference_sample_gates_grad(const ReferenceGates& r, const Eigen::ArrayBase<D>& theta,
                                                    const Eigen::ArrayBase<U>& uniform) {
  using S = typename D::Scalar;
  detail::check_reference_gates(r);
  detail::check_logits(theta, "reference_sample_gates_grad");
  detail::check_uniforms(theta, uniform, "reference_sample_gates_grad");
  const S inv = static_cast<S>(1.0 / (r.scale * r.temperature)), noise = static_cast<S>(r.noise),
          stretch = static_cast<S>(r.stretch);
  return theta.binaryExpr(uniform.template cast<S>(), [=](S t, S u) {
    const S v = S(0.5) + noise * (S(2) * u - S(1));
    const S y = detail::sigmoid(std::log(v) - std::log1p(-v) + t * inv);
    return stretch * y * (S(1) - y) * inv;
  });
}

/// @brief The reference's probability that a gate is non-zero (its "expected score"):
/// \f$ 1 - \mathrm{clip}_{[\epsilon, 1-\epsilon]}\,\sigma(-T\,\mathrm{logit}(\mathrm{offset}) - a) \f$.
template <class D>
typename D::PlainObject reference_prob_nonzero(const ReferenceGates& r, const Eigen::ArrayBase<D>& theta) {
  using S = typename D::Scalar;
  detail::check_reference_gates(r);
  detail::check_logits(theta, "reference_prob_nonzero");
  const S inv = static_cast<S>(1.0 / (r.scale * r.temperature)),
          shift = static_cast<S>(r.temperature * std::log(r.offset_gate / (1.0 - r.offset_gate))),
          eps = static_cast<S>(r.epsilon);
  return theta.unaryExpr(
      [=](S t) { return S(1) - std::min(S(1) - eps, std::max(eps, detail::sigmoid(-shift - t * inv))); });
}

/// @brief \f$ \partial \f$ reference_prob_nonzero() \f$ / \partial\theta \f$ (0 where the clip is active).
template <class D>
typename D::PlainObject reference_prob_nonzero_grad(const ReferenceGates& r,
                                                    const Eigen::ArrayBase<D>& theta) {
  using S = typename D::Scalar;
  detail::check_reference_gates(r);
  detail::check_logits(theta, "reference_prob_nonzero_grad");
  const S inv = static_cast<S>(1.0 / (r.scale * r.temperature)),
          shift = static_cast<S>(r.temperature * std::log(r.offset_gate / (1.0 - r.offset_gate))),
          eps = static_cast<S>(r.epsilon);
  return theta.unaryExpr([=](S t) {
    const S c = detail::sigmoid(-shift - t * inv);
    return (c > eps && c < S(1) - eps) ? c * (S(1) - c) * inv : S(0);
  });
}

/// @brief Expected sparsity \f$ 1 - \frac1N \sum P(z \ne 0) \f$ of the reference (one mask row).
template <class D>
typename D::Scalar reference_expected_sparsity(const ReferenceGates& r, const Eigen::ArrayBase<D>& theta) {
  HEADALIGN_CHECK(theta.size() > 0, "reference_expected_sparsity: no gates");
  return typename D::Scalar(1) - reference_prob_nonzero(r, theta).mean();
}

/// @brief Evaluation gates of the reference for one mask row: \f$ \sigma(a) \f$ with the
/// @p num_zeros smallest set to 0 (ties: lower index first).
/// @param num_zeros how many gates to zero; negative = round(Σ (1 − P(z ≠ 0))), the expected
///        number of zeros (the reference's default when no target size is given)
template <class D>
typename D::PlainObject reference_deterministic_gates(const ReferenceGates& r,
                                                      const Eigen::ArrayBase<D>& theta,
                                                      Index num_zeros = -1) {
  using S = typename D::Scalar;
  detail::check_reference_gates(r);
  detail::check_logits(theta, "reference_deterministic_gates");
  const S inv = static_cast<S>(1.0 / (r.scale * r.temperature));
  typename D::PlainObject z = theta.unaryExpr([=](S t) { return detail::sigmoid(t * inv); });
  if (num_zeros < 0) {
    const S expected_zeros = static_cast<S>(theta.size()) - reference_prob_nonzero(r, theta).sum();
    num_zeros = static_cast<Index>(std::llround(static_cast<double>(expected_zeros)));
  }
  HEADALIGN_CHECK(num_zeros <= theta.size(), "reference_deterministic_gates: num_zeros ("
                                                 << num_zeros << ") exceeds the " << theta.size()
                                                 << " gates");
  std::vector<Index> idx(static_cast<std::size_t>(z.size()));
  std::iota(idx.begin(), idx.end(), Index(0));
  std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) { return z.coeff(a) < z.coeff(b); });
  for (Index i = 0; i < num_zeros; ++i) z.coeffRef(idx[static_cast<std::size_t>(i)]) = S(0);
  return z;
}

/// @brief The reference's sparsity loss: L1 + L2 of the gap, \f$ |e - t| + (|e - t| + \epsilon)^2 \f$
/// for expected sparsity e and scheduled target t.
inline double reference_sparsity_loss(double expected, double target, double epsilon = 1e-6) {
  const double gap = std::abs(expected - target);
  return gap + (gap + epsilon) * (gap + epsilon);
}

/// @brief \f$ \partial \f$ reference_sparsity_loss() \f$ / \partial e = \mathrm{sign}(e - t)(1 + 2(|e - t| +
/// \epsilon)) \f$.
inline double reference_sparsity_loss_grad(double expected, double target, double epsilon = 1e-6) {
  const double diff = expected - target;
  const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
  return sign * (1.0 + 2.0 * (std::abs(diff) + epsilon));
}

/// @brief Scheduled target sparsity: rises linearly from 0 to @p final_target over the first
/// @p warmup_fraction of the steps, then stays (reference: target 1 over the first 30 %).
inline double reference_target_sparsity(long long step, long long total_steps, double final_target = 1.0,
                                        double warmup_fraction = 0.3) {
  HEADALIGN_CHECK(total_steps > 0 && step >= 0 && warmup_fraction > 0 && warmup_fraction <= 1,
                  "reference_target_sparsity: need step ≥ 0, total_steps > 0, warmup_fraction in (0, 1] (got "
                      << step << ", " << total_steps << ", " << warmup_fraction << ")");
  const double warmup = warmup_fraction * static_cast<double>(total_steps);
  return final_target * std::min(1.0, static_cast<double>(step) / warmup);
}

/// @brief Whether the reference forces every gate off at @p step (after @p off_fraction of the steps, 80 %).
inline bool reference_gates_forced_off(long long step, long long total_steps, double off_fraction = 0.8) {
  HEADALIGN_CHECK(total_steps > 0 && step >= 0,
                  "reference_gates_forced_off: need step ≥ 0 and total_steps > 0");
  return static_cast<double>(step) >= off_fraction * static_cast<double>(total_steps);
}

/// @brief Seeded source of uniforms in the open interval (0, 1) and of sampled gates, for users
/// without their own RNG. The sequence depends only on the seed (std::mt19937_64 and a fixed
/// 53-bit mapping), so it is the same on every platform.
class GateSampler {
 public:
  explicit GateSampler(std::uint64_t seed = 0) : rng_(seed) {}

  /// One uniform in (0, 1): (k + 0.5)·2⁻⁵³ for a random 53-bit k, never 0 or 1.
  double uniform() { return (static_cast<double>(rng_() >> 11) + 0.5) * 0x1.0p-53; }

  /// Uniforms shaped like @p like.
  template <class D>
  typename D::PlainObject uniforms_like(const Eigen::ArrayBase<D>& like) {
    typename D::PlainObject u(like.rows(), like.cols());
    using S = typename D::Scalar;
    for (Index i = 0; i < u.size(); ++i) {
      // Rounding to a narrower type must not reach 0 or 1.
      const S x = static_cast<S>(uniform());
      u.coeffRef(i) =
          std::min(std::max(x, std::numeric_limits<S>::min()), S(1) - std::numeric_limits<S>::epsilon() / 2);
    }
    return u;
  }

  /// Training-time hard-concrete gates (sample_gates() with fresh uniforms).
  template <class D>
  typename D::PlainObject sample(const HardConcrete& hc, const Eigen::ArrayBase<D>& log_alpha) {
    return sample_gates(hc, log_alpha, uniforms_like(log_alpha));
  }

  /// Training-time reference gates (reference_sample_gates() with fresh uniforms).
  template <class D>
  typename D::PlainObject sample(const ReferenceGates& r, const Eigen::ArrayBase<D>& theta) {
    return reference_sample_gates(r, theta, uniforms_like(theta));
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace headalign

#endif  // HEADALIGN_HARD_CONCRETE_HPP
