// Generalized Procrustes in Gram space: equality with the direct computation, planted rotations,
// monotone objective, RoPE structure, small groups, errors.
#include <headalign/gpa.hpp>
#include <headalign/grouping.hpp>
#include <headalign/similarity.hpp>

#include "test_util.hpp"

#include <catch2/catch.hpp>

using namespace headalign;
using headalign::test::gaussian;
using headalign::test::orthogonality_error;
using headalign::test::random_orthogonal;
using headalign::test::tol;

namespace {

// The reference's GPA on stored activations: mean shape of the aligned heads, every head
// re-aligned onto it, until the gain of Σ_{t<u} mean_t (x_t R_t)·(x_u R_u) is below tol.
struct DirectGpa {
  std::vector<Matrix<double>> r;
  double objective = 0;
  int iterations = 0;
};

DirectGpa direct_gpa(const std::vector<Matrix<double>>& x, Alignment al, const RopeSpec& rope, int max_it,
                     double tolerance, bool sequential = false) {
  const std::size_t k = x.size();
  const Index d = x[0].cols();
  const double n = static_cast<double>(x[0].rows());
  auto solve = [&](const Matrix<double>& m) { return procrustes(m, al, rope, {PolarMethod::JacobiSvd}).rotation; };
  auto objective = [&](const std::vector<Matrix<double>>& r) {
    double s = 0;
    for (std::size_t t = 0; t < k; ++t)
      for (std::size_t u = t + 1; u < k; ++u) s += (x[t] * r[t]).cwiseProduct(x[u] * r[u]).sum();
    return s / n;
  };
  DirectGpa out;
  out.r.assign(k, Matrix<double>::Identity(d, d));
  for (std::size_t t = 1; t < k; ++t) out.r[t] = solve(x[t].transpose() * x[0]);
  out.objective = objective(out.r);
  if (k <= 2) return out;
  double scale = 0;
  for (std::size_t t = 0; t < k; ++t)
    for (std::size_t u = t + 1; u < k; ++u) scale += x[t].norm() * x[u].norm();
  scale /= n * static_cast<double>(k * (k - 1) / 2);
  for (int it = 1; it <= max_it; ++it) {
    if (sequential) {
      // Each head in turn onto the sum of the others as they stand.
      for (std::size_t t = 0; t < k; ++t) {
        Matrix<double> others = Matrix<double>::Zero(x[0].rows(), d);
        for (std::size_t u = 0; u < k; ++u)
          if (u != t) others += x[u] * out.r[u];
        out.r[t] = solve(x[t].transpose() * others);
      }
    } else {
      Matrix<double> mean = Matrix<double>::Zero(x[0].rows(), d);
      for (std::size_t u = 0; u < k; ++u) mean += x[u] * out.r[u] / static_cast<double>(k);
      std::vector<Matrix<double>> next(k);
      for (std::size_t t = 0; t < k; ++t) next[t] = solve(x[t].transpose() * mean);
      out.r = next;
    }
    const double obj = objective(out.r);
    const double gain = obj - out.objective;
    out.objective = obj;
    out.iterations = it;
    if (gain < tolerance * scale) break;
  }
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("GPA in Gram space equals GPA on the activations", "[gpa]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(51);
  const Index h = 5, d = 6, n = 400;
  const Matrix<double> base = gaussian<double>(n, d, rng);
  Matrix<double> x(n, h * d);
  for (Index i = 0; i < h; ++i)
    x.middleCols(i * d, d) = base * random_orthogonal<double>(d, rng) + 0.8 * gaussian<double>(n, d, rng);
  const std::vector<Index> heads{3, 0, 4, 1};
  for (GpaUpdate update : {GpaUpdate::Reference, GpaUpdate::Sequential})
  for (Alignment al : {Alignment::Orthogonal, Alignment::Rotation, Alignment::Rope}) {
    const bool sequential = update == GpaUpdate::Sequential;
    CAPTURE(static_cast<int>(al), sequential);
    HeadGram<S> g(h, d, true);
    g.add(x.cast<S>().eval());
    std::vector<Matrix<double>> xs;
    for (Index hd : heads) {
      Matrix<double> a = x.middleCols(hd * d, d);
      a.rowwise().normalize();
      xs.push_back(a);
    }
    // Few iterations and a tight tolerance keep both runs in lock-step.
    GpaOptions o;
    o.max_iterations = 5;
    o.tolerance = 0;
    o.update = update;
    const auto res = align_group(g, heads, al, {}, o);
    const auto ref = direct_gpa(xs, al, {}, 5, 0, sequential);
    // (In float a converged run can see a gain of −1e-7 from round-off and stop one step early;
    // which run does depends on the compiler and on the polar method that Auto picks.)
    if (std::is_same<S, double>::value)
      CHECK(res.iterations == ref.iterations);
    else
      CHECK(std::abs(res.iterations - ref.iterations) <= 1);
    CHECK(std::abs(static_cast<double>(res.objective) - ref.objective) < tol<S>(n, 10.0));
    for (std::size_t t = 0; t < heads.size(); ++t) {
      CHECK(orthogonality_error(res.rotations[t]) < tol<S>(d));
      CHECK((res.rotations[t].template cast<double>() - ref.r[t]).cwiseAbs().maxCoeff() < tol<S>(n, 10.0));
    }
    // The aligned heads X_t R_t agree between the two computations.
    for (std::size_t t = 0; t < heads.size(); ++t)
      CHECK((xs[t] * res.rotations[t].template cast<double>() - xs[t] * ref.r[t]).cwiseAbs().maxCoeff() <
            tol<S>(n, 10.0));
    // The default stopping rule also runs the same number of iterations.
    GpaOptions defaults;
    defaults.update = update;
    const auto res2 = align_group(g, heads, al, {}, defaults);
    const auto ref2 = direct_gpa(xs, al, {}, 100, 1e-5, sequential);
    CHECK(res2.converged);
    CHECK(res2.info == CompInfo::Successful);
    if (std::is_same<S, double>::value) CHECK(res2.iterations == ref2.iterations);
    CHECK(std::abs(static_cast<double>(res2.objective) - ref2.objective) < tol<S>(n, 10.0));
  }
}

TEMPLATE_TEST_CASE("GPA recovers planted relative rotations and never lowers its objective", "[gpa]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(52);
  const Index k = 4, d = 8, n = 2000;
  for (Alignment al : {Alignment::Orthogonal, Alignment::Rope}) {
    CAPTURE(static_cast<int>(al));
    const Matrix<double> base = gaussian<double>(n, d, rng);
    std::vector<Matrix<double>> q;
    Matrix<double> x(n, k * d);
    for (Index t = 0; t < k; ++t) {
      // Orthogonal: any orthogonal matrix; Rope: a block rotation from the feasible set.
      Matrix<double> qt = random_orthogonal<double>(d, rng);
      if (al == Alignment::Rope) qt = procrustes(gaussian<double>(d, d, rng), Alignment::Rope).rotation;
      q.push_back(qt);
      x.middleCols(t * d, d) = base * qt + 0.05 * gaussian<double>(n, d, rng);
    }
    HeadGram<S> g(k, d);
    g.add(x.cast<S>().eval());
    const auto res = align_group(g, {0, 1, 2, 3}, al);
    CHECK(res.converged);
    // X_t = base·Q_t, so R_t = Q_tᵀ C for a common C: R_t R_uᵀ = Q_tᵀ Q_u.
    for (Index t = 0; t < k; ++t)
      for (Index u = 0; u < k; ++u) {
        const Matrix<double> rel = res.rotations[static_cast<std::size_t>(t)].template cast<double>() *
                                   res.rotations[static_cast<std::size_t>(u)].template cast<double>().transpose();
        CHECK((rel - q[static_cast<std::size_t>(t)].transpose() * q[static_cast<std::size_t>(u)]).cwiseAbs().maxCoeff() < 0.02);
      }
    // Monotone: the objective after m iterations never decreases with m.
    for (GpaUpdate update : {GpaUpdate::Reference, GpaUpdate::Sequential}) {
      double last = -1e300;
      for (int m = 0; m <= 6; ++m) {
        GpaOptions o;
        o.max_iterations = m;
        o.tolerance = 0;
        o.update = update;
        const double obj = static_cast<double>(align_group(g, {2, 0, 3, 1}, al, {}, o).objective);
        CHECK(obj >= last - tol<S>(n, 10.0));
        last = obj;
      }
    }
  }
}

TEST_CASE("planted heads: similarity + grouping + GPA recover sources and rotations", "[gpa][grouping]") {
  std::mt19937_64 rng(53);
  const Index groups = 4, per = 4, h = groups * per, d = 16, n = 3000;
  std::vector<Matrix<double>> sources;
  for (Index c = 0; c < groups; ++c) sources.push_back(gaussian<double>(n, d, rng));
  std::vector<Index> label(static_cast<std::size_t>(h));
  for (Index i = 0; i < h; ++i) label[static_cast<std::size_t>(i)] = i % groups;
  std::shuffle(label.begin(), label.end(), rng);
  for (Alignment al : {Alignment::Orthogonal, Alignment::Rope}) {
    Matrix<double> x(n, h * d);
    std::vector<Matrix<double>> q;
    for (Index i = 0; i < h; ++i) {
      Matrix<double> qi = al == Alignment::Rope ? procrustes(gaussian<double>(d, d, rng), Alignment::Rope).rotation
                                                : random_orthogonal<double>(d, rng);
      q.push_back(qi);
      x.middleCols(i * d, d) = sources[static_cast<std::size_t>(label[static_cast<std::size_t>(i)])] * qi +
                               0.1 * gaussian<double>(n, d, rng);
    }
    HeadGram<double> g(h, d, true);
    g.add(x);
    const Matrix<double> sim = similarity_matrix(g, al, Metric::Cosine);
    // Without alignment the planted groups are invisible; with it they are found exactly.
    const Grouping gr = group_heads(sim, groups);
    for (const auto& grp : gr.groups) {
      for (Index i : grp) CHECK(label[static_cast<std::size_t>(i)] == label[static_cast<std::size_t>(grp[0])]);
      const auto res = align_group(g, grp, al);
      CHECK(res.converged);
      for (std::size_t t = 0; t < grp.size(); ++t)
        for (std::size_t u = 0; u < grp.size(); ++u) {
          const Matrix<double> rel = res.rotations[t] * res.rotations[u].transpose();
          const Matrix<double> truth = q[static_cast<std::size_t>(grp[t])].transpose() * q[static_cast<std::size_t>(grp[u])];
          CHECK((rel - truth).cwiseAbs().maxCoeff() < 0.03);
        }
    }
  }
}

TEST_CASE("GPA on groups of one and two, RoPE structure, and bad input", "[gpa][errors]") {
  std::mt19937_64 rng(54);
  const Index h = 3, d = 8;
  HeadGram<double> g(h, d, true);
  g.add(gaussian<double>(100, h * d, rng));
  const auto one = align_group(g, {2}, Alignment::Orthogonal);
  CHECK(one.rotations.size() == 1);
  CHECK(one.rotations[0] == Matrix<double>::Identity(d, d));
  CHECK(one.converged);
  CHECK(one.objective == 0);
  const auto two = align_group(g, {1, 2}, Alignment::Rotation);
  CHECK(two.iterations == 0);
  CHECK(two.rotations[0] == Matrix<double>::Identity(d, d));
  CHECK(std::abs(two.objective - procrustes_score(g.block(2, 1), Alignment::Rotation) / 100.0) < 1e-12);
  const RopeSpec rope{RopeSpec::Pairing::Interleaved, 4};
  const auto rp = align_group(g, {0, 1, 2}, Alignment::Rope, rope);
  for (const auto& r : rp.rotations) {
    CHECK(r.block(0, 2, 2, 2).cwiseAbs().maxCoeff() == 0.0);  // planes (0,1) and (2,3) do not mix
    CHECK(r.block(0, 4, 4, 4).cwiseAbs().maxCoeff() == 0.0);  // rotary and non-rotary dims do not mix
    CHECK(orthogonality_error(r) < 1e-12);
  }
  const auto none = align_group(g, {0, 1, 2}, Alignment::None);
  for (const auto& r : none.rotations) CHECK(r == Matrix<double>::Identity(d, d));
  CHECK_THROWS_WITH(align_group(g, {0, 0}, Alignment::Orthogonal), Catch::Contains("appears twice"));
  CHECK_THROWS_WITH(align_group(g, {0, 3}, Alignment::Orthogonal), Catch::Contains("head 3 out of range"));
  CHECK_THROWS_AS(align_group(g, {}, Alignment::Orthogonal), headalign::invalid_argument);
  HeadGram<double> empty(h, d);
  CHECK_THROWS_WITH(align_group(empty, {0, 1}, Alignment::Orthogonal), Catch::Contains("no tokens"));
}
