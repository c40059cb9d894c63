// Hard-concrete gates: closed forms, Monte Carlo agreement, derivatives against finite differences,
// the reference variant and its schedule, the seeded sampler, bad input.
#include <headalign/hard_concrete.hpp>

#include <catch2/catch.hpp>

#include <cmath>

using namespace headalign;

namespace {

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Central finite difference of f at each element of a (step h).
template <class F>
Eigen::ArrayXd numeric_grad(F f, const Eigen::ArrayXd& a, double h = 1e-6) {
  Eigen::ArrayXd g(a.size());
  for (Index i = 0; i < a.size(); ++i) {
    Eigen::ArrayXd p = a, m = a;
    p(i) += h;
    m(i) -= h;
    g(i) = (f(p)(i) - f(m)(i)) / (2 * h);
  }
  return g;
}

}  // namespace

TEST_CASE("hard concrete closed forms (Louizos et al. 2018)", "[gates]") {
  const HardConcrete hc;
  Eigen::ArrayXd la(5);
  la << -3, -0.5, 0, 1.5, 4;
  const Eigen::ArrayXd p = prob_nonzero(hc, la);
  for (Index i = 0; i < la.size(); ++i) {
    // P(z > 0) = P(s(ζ−γ)+γ > 0) = P(logistic noise > β·logit(−γ/(ζ−γ)) − log α).
    const double c = -hc.gamma / (hc.zeta - hc.gamma);
    const double threshold = hc.beta * std::log(c / (1 - c)) - la(i);
    CHECK(p(i) == Approx(1 - sig(threshold)).epsilon(1e-12));
  }
  CHECK(expected_l0(hc, la) == Approx(p.sum()).epsilon(1e-14));
  // Deterministic gates: σ(0)·1.2 − 0.1 = 0.5; saturate at 0 and 1.
  Eigen::ArrayXd det_in(3);
  det_in << 0, 20, -20;
  const Eigen::ArrayXd det = deterministic_gates(hc, det_in);
  CHECK(det(0) == Approx(0.5).epsilon(1e-14));
  CHECK(det(1) == 1.0);
  CHECK(det(2) == 0.0);
  // Sampled gate from a given u by hand: u = 0.3, log α = 0.2.
  Eigen::ArrayXd a1(1), u1(1);
  a1 << 0.2;
  u1 << 0.3;
  const double s = sig((std::log(0.3) - std::log(0.7) + 0.2) / hc.beta);
  CHECK(sample_gates(hc, a1, u1)(0) == Approx(std::min(1.0, std::max(0.0, s * 1.2 - 0.1))).epsilon(1e-14));
  // Float and 2-D arrays work element-wise.
  Eigen::ArrayXXf la2(2, 2);
  la2 << -1, 0, 1, 2;
  const Eigen::ArrayXXf p2 = prob_nonzero(hc, la2);
  CHECK(p2(1, 0) == Approx(prob_nonzero(hc, Eigen::ArrayXd::Constant(1, 1.0))(0)).epsilon(1e-6));
  CHECK(p2(0, 1) == Approx(p(2)).epsilon(1e-6));
}

TEST_CASE("sampled gates agree with prob_nonzero and with the expected gate (Monte Carlo)", "[gates]") {
  const HardConcrete hc;
  GateSampler sampler(42);
  const int draws = 200000;
  for (double log_alpha : {-2.0, 0.0, 1.0, 3.0}) {
    CAPTURE(log_alpha);
    const Eigen::ArrayXd la = Eigen::ArrayXd::Constant(draws, log_alpha);
    const Eigen::ArrayXd z = sampler.sample(hc, la);
    CHECK((z >= 0).all());
    CHECK((z <= 1).all());
    const double frac = (z > 0).cast<double>().mean();
    const double p = prob_nonzero(hc, Eigen::ArrayXd::Constant(1, log_alpha))(0);
    CHECK(std::abs(frac - p) < 5 * std::sqrt(p * (1 - p) / draws) + 1e-9);
    // E[z] by the midpoint rule over u (an independent quadrature of the same integral).
    const int m = 100000;
    Eigen::ArrayXd u(m);
    for (int i = 0; i < m; ++i) u(i) = (i + 0.5) / m;
    const double expected = sample_gates(hc, Eigen::ArrayXd::Constant(m, log_alpha), u).mean();
    const double sd = std::sqrt((z - z.mean()).square().mean());
    CHECK(std::abs(z.mean() - expected) < 5 * sd / std::sqrt(static_cast<double>(draws)));
  }
}

TEST_CASE("gate derivatives match finite differences", "[gates]") {
  const HardConcrete hc;
  Eigen::ArrayXd la(6), u(6);
  la << -2.5, -0.7, 0.1, 0.9, 2.2, 3.0;
  u << 0.2, 0.45, 0.5, 0.61, 0.3, 0.05;
  const auto fp = [&](const Eigen::ArrayXd& a) { return Eigen::ArrayXd(prob_nonzero(hc, a)); };
  const auto fs = [&](const Eigen::ArrayXd& a) { return Eigen::ArrayXd(sample_gates(hc, a, u)); };
  const auto fd = [&](const Eigen::ArrayXd& a) { return Eigen::ArrayXd(deterministic_gates(hc, a)); };
  CHECK((prob_nonzero_grad(hc, la) - numeric_grad(fp, la)).abs().maxCoeff() < 1e-8);
  CHECK((sample_gates_grad(hc, la, u) - numeric_grad(fs, la)).abs().maxCoeff() < 1e-8);
  CHECK((deterministic_gates_grad(hc, la) - numeric_grad(fd, la)).abs().maxCoeff() < 1e-8);
  // Clipped gates have zero gradient.
  Eigen::ArrayXd sat(2), us(2);
  sat << 30, -30;
  us << 0.5, 0.5;
  CHECK((sample_gates_grad(hc, sat, us) == 0).all());
  CHECK((deterministic_gates_grad(hc, sat) == 0).all());

  const ReferenceGates ref;
  Eigen::ArrayXd theta(5), ur(5);
  theta << -5e-3, -1e-3, 0, 1e-3, 2e-3;
  ur << 0.1, 0.5, 0.9, 0.3, 0.7;
  const auto frp = [&](const Eigen::ArrayXd& t) { return Eigen::ArrayXd(reference_prob_nonzero(ref, t)); };
  const auto frs = [&](const Eigen::ArrayXd& t) {
    // Straight-through: the derivative of the unclipped stretched sigmoid.
    Eigen::ArrayXd y(t.size());
    for (Index i = 0; i < t.size(); ++i) {
      const double v = 0.5 + ref.noise * (2 * ur(i) - 1);
      y(i) = (sig(std::log(v / (1 - v)) + t(i) / (ref.scale * ref.temperature)) - 0.5) * ref.stretch + 0.5;
    }
    return y;
  };
  CHECK((reference_prob_nonzero_grad(ref, theta) - numeric_grad(frp, theta, 1e-9)).abs().maxCoeff() < 1e-4);
  CHECK((reference_sample_gates_grad(ref, theta, ur) - numeric_grad(frs, theta, 1e-9)).abs().maxCoeff() < 1e-4);
  CHECK(reference_sparsity_loss_grad(0.3, 0.5) ==
        Approx((reference_sparsity_loss(0.3 + 1e-7, 0.5) - reference_sparsity_loss(0.3 - 1e-7, 0.5)) / 2e-7).epsilon(1e-6));
}

TEST_CASE("the reference variant: initial gates, clamping, sparsity, deterministic top-k, schedule", "[gates]") {
  const ReferenceGates ref;
  // Initial parameter: logit 6; with u = 0.5 (no noise) the gate is (σ(6) − 0.5)·1.005 + 0.5.
  const double theta0 = reference_initial_parameter(ref);
  CHECK(theta0 == Approx(6.0 / 3.0 * 1e-3).epsilon(1e-14));
  CHECK(reference_logits(ref, Eigen::ArrayXd::Constant(1, theta0))(0) == Approx(6.0).epsilon(1e-14));
  const double z0 = reference_sample_gates(ref, Eigen::ArrayXd::Constant(1, theta0), Eigen::ArrayXd::Constant(1, 0.5))(0);
  CHECK(z0 == 1.0);  // (σ(6) − 0.5)·1.005 + 0.5 > 1: the stretch makes the initial gates exactly open
  const double theta5 = 5.0 / 3.0 * 1e-3;  // logit 5 stays inside: (σ(5) − 0.5)·1.005 + 0.5 < 1
  const double z5 = reference_sample_gates(ref, Eigen::ArrayXd::Constant(1, theta5), Eigen::ArrayXd::Constant(1, 0.5))(0);
  CHECK(z5 == Approx((sig(5) - 0.5) * 1.005 + 0.5).epsilon(1e-14));
  // Noise range: u ∈ (0, 1) ↦ U(0.4, 0.6); u → 0 gives the logistic noise log(0.4/0.6).
  const double lo = reference_sample_gates(ref, Eigen::ArrayXd::Constant(1, 0.0), Eigen::ArrayXd::Constant(1, 1e-12))(0);
  CHECK(lo == Approx((sig(std::log(0.4 / 0.6)) - 0.5) * 1.005 + 0.5).epsilon(1e-9));
  // Large logits clip to exactly 1 and 0.
  Eigen::ArrayXd big(2);
  big << 0.01, -0.01;
  const Eigen::ArrayXd zb = reference_sample_gates(ref, big, Eigen::ArrayXd::Constant(2, 0.5));
  CHECK(zb(0) == 1.0);
  CHECK(zb(1) == 0.0);
  // Clamp to ±24 logits: θ ∈ ±8e-3 at T = 1/3, α = 1e-3.
  const Eigen::ArrayXd cl = reference_clamp_parameters(ref, big);
  CHECK(cl(0) == Approx(8e-3).epsilon(1e-12));
  CHECK(cl(1) == Approx(-8e-3).epsilon(1e-12));
  // P(z ≠ 0) = σ(a + T·logit(0.995)) inside the clip.
  Eigen::ArrayXd t(3);
  t << -2e-3, 0, 1e-3;
  const Eigen::ArrayXd pr = reference_prob_nonzero(ref, t);
  const double shift = std::log(0.995 / 0.005) / 3.0;
  for (Index i = 0; i < 3; ++i) CHECK(pr(i) == Approx(sig(t(i) / (1e-3 / 3.0) + shift)).epsilon(1e-12));
  CHECK(reference_expected_sparsity(ref, t) == Approx(1 - pr.mean()).epsilon(1e-14));
  // Deterministic: σ(a), the k smallest zeroed.
  Eigen::ArrayXd th(5);
  th << 1e-3, -2e-3, 3e-3, -1e-3, 0;
  const Eigen::ArrayXd det = reference_deterministic_gates(ref, th, 2);
  CHECK(det(1) == 0.0);
  CHECK(det(3) == 0.0);
  CHECK(det(4) == Approx(0.5).epsilon(1e-14));
  CHECK(det(0) == Approx(sig(3.0)).epsilon(1e-14));
  // Default k = round(expected zeros).
  const long expected_zeros = std::lround(5 - reference_prob_nonzero(ref, th).sum());
  CHECK(((reference_deterministic_gates(ref, th) == 0).count()) == expected_zeros);
  CHECK_THROWS_AS(reference_deterministic_gates(ref, th, 6), invalid_argument);
  // Loss and schedule: L1 + L2 of the gap; target 0 → 1 over the first 30 %, gates off after 80 %.
  CHECK(reference_sparsity_loss(0.2, 0.5) == Approx(0.3 + (0.3 + 1e-6) * (0.3 + 1e-6)).epsilon(1e-14));
  CHECK(reference_target_sparsity(0, 1000) == 0.0);
  CHECK(reference_target_sparsity(150, 1000) == Approx(0.5).epsilon(1e-14));
  CHECK(reference_target_sparsity(300, 1000) == Approx(1.0).epsilon(1e-14));
  CHECK(reference_target_sparsity(700, 1000) == 1.0);
  CHECK(reference_target_sparsity(60, 1000, 0.75) == Approx(0.15).epsilon(1e-14));
  CHECK_FALSE(reference_gates_forced_off(799, 1000));
  CHECK(reference_gates_forced_off(800, 1000));
}

TEST_CASE("GateSampler is deterministic for a seed and stays inside (0, 1)", "[gates]") {
  GateSampler a(7), b(7), c(8);
  const Eigen::ArrayXd shape = Eigen::ArrayXd::Zero(1000);
  const Eigen::ArrayXd ua = a.uniforms_like(shape), ub = b.uniforms_like(shape), uc = c.uniforms_like(shape);
  CHECK((ua == ub).all());
  CHECK_FALSE((ua == uc).all());
  CHECK((ua > 0).all());
  CHECK((ua < 1).all());
  CHECK(std::abs(ua.mean() - 0.5) < 0.05);
  const Eigen::ArrayXf uf = GateSampler(9).uniforms_like(Eigen::ArrayXf::Zero(100000));
  CHECK((uf > 0).all());
  CHECK((uf < 1).all());
}

TEST_CASE("gates reject bad input", "[gates][errors]") {
  const HardConcrete hc;
  Eigen::ArrayXd la(2), u(2);
  la << 0, 1;
  u << 0.5, 1.0;  // 1 is outside (0, 1)
  CHECK_THROWS_AS(sample_gates(hc, la, u), invalid_argument);
  CHECK_THROWS_AS(sample_gates(hc, la, Eigen::ArrayXd::Constant(3, 0.5)), invalid_argument);
  Eigen::ArrayXd nan = la;
  nan(0) = std::nan("");
  CHECK_THROWS_AS(prob_nonzero(hc, nan), invalid_argument);
  CHECK_THROWS_AS(deterministic_gates(HardConcrete{0.0, -0.1, 1.1}, la), invalid_argument);
  CHECK_THROWS_AS(prob_nonzero(HardConcrete{2.0 / 3.0, 0.1, 1.1}, la), invalid_argument);
  ReferenceGates bad;
  bad.noise = 0.7;
  CHECK_THROWS_AS(reference_sample_gates(bad, la, Eigen::ArrayXd::Constant(2, 0.5)), invalid_argument);
  CHECK_THROWS_AS(reference_target_sparsity(1, 0), invalid_argument);
}
