// similarity_matrix: Gram space equals the direct per-token computation; symmetry; joint option.
#include <headalign/similarity.hpp>

#include "test_util.hpp"

#include <catch2/catch.hpp>

using namespace headalign;
using headalign::test::gaussian;
using headalign::test::random_orthogonal;
using headalign::test::tol;

namespace {

// The reference's way: solve Procrustes on AᵀB computed from the activations, then average the
// per-token cosine or squared distance between a_t R and b_t over the n tokens.
double direct_similarity(const Matrix<double>& a, const Matrix<double>& b, Alignment al, Metric metric, bool cosine_rows,
                         const RopeSpec& rope) {
  const Matrix<double> r = procrustes(Matrix<double>(a.transpose() * b), al, rope, {PolarMethod::JacobiSvd}).rotation;
  const Matrix<double> ar = a * r;
  double sum = 0;
  for (Index t = 0; t < a.rows(); ++t) {
    if (metric == Metric::Distance) {
      sum -= (ar.row(t) - b.row(t)).squaredNorm();
    } else if (cosine_rows) {
      const double den = ar.row(t).norm() * b.row(t).norm();
      sum += den > 0 ? ar.row(t).dot(b.row(t)) / den : 0.0;
    }
  }
  if (metric == Metric::Cosine && !cosine_rows)  // cosine of the stacked activations
    return ar.cwiseProduct(b).sum() / (a.norm() * b.norm());
  return sum / static_cast<double>(a.rows());
}

}  // namespace

TEMPLATE_TEST_CASE("similarity_matrix equals the direct computation on the tokens", "[similarity]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(31);
  const Index h = 4, d = 8, n = 500;
  Matrix<double> x = gaussian<double>(n, h * d, rng);
  x.middleCols(d, d) = x.middleCols(0, d) * random_orthogonal<double>(d, rng) + 0.3 * gaussian<double>(n, d, rng);
  x.row(3).segment(2 * d, d).setZero();  // a zero token vector: its cosine counts as 0
  const RopeSpec ropes[] = {RopeSpec{}, RopeSpec{RopeSpec::Pairing::Interleaved, 4}};
  for (bool normalize : {true, false}) {
    HeadGram<S> g(h, d, normalize);
    g.add(x.cast<S>().eval());
    for (Alignment al : {Alignment::None, Alignment::Orthogonal, Alignment::Rotation, Alignment::Rope}) {
      for (Metric metric : {Metric::Cosine, Metric::Distance}) {
        for (const RopeSpec& rope : ropes) {
          CAPTURE(normalize, static_cast<int>(al), static_cast<int>(metric));
          const Matrix<S> sim = similarity_matrix(g, al, metric, rope);
          CHECK(sim.diagonal().cwiseAbs().maxCoeff() == S(0));
          CHECK((sim - sim.transpose()).cwiseAbs().maxCoeff() == S(0));
          for (Index i = 0; i < h; ++i)
            for (Index j = 0; j < h; ++j) {
              if (i == j) continue;
              // Direct: with normalize_rows the reference normalises the token vectors first.
              Matrix<double> a = x.middleCols(i * d, d), b = x.middleCols(j * d, d);
              if (normalize)
                for (Index t = 0; t < n; ++t) {
                  if (a.row(t).norm() > 0) a.row(t).normalize();
                  if (b.row(t).norm() > 0) b.row(t).normalize();
                }
              // Zero token vectors: the Gram counts their cosine as 0, as the direct loop does.
              const double expected = direct_similarity(a, b, al, metric, normalize, rope);
              const double scale = metric == Metric::Distance ? 4.0 * d : 1.0;
              CHECK(std::abs(static_cast<double>(sim(i, j)) - expected) < tol<S>(n, scale));
            }
        }
      }
    }
  }
  // The planted pair (0, 1) is the most similar after alignment but not before.
  HeadGram<double> g(h, d, true);
  g.add(x);
  const Matrix<double> aligned = similarity_matrix(g, Alignment::Orthogonal, Metric::Cosine);
  const Matrix<double> plain = similarity_matrix(g, Alignment::None, Metric::Cosine);
  CHECK(aligned(0, 1) > 0.9);
  CHECK(std::abs(plain(0, 1)) < 0.3);
}

TEST_CASE("Orthogonal ≥ Rotation ≥ Rope ≥ None similarities; joint is the sum", "[similarity]") {
  std::mt19937_64 rng(32);
  const Index h = 5, d = 6;
  HeadGram<double> keys(h, d, true), values(h, d, true);
  keys.add(gaussian<double>(200, h * d, rng));
  values.add(gaussian<double>(200, h * d, rng));
  const auto o = similarity_matrix(keys, Alignment::Orthogonal, Metric::Cosine);
  const auto r = similarity_matrix(keys, Alignment::Rotation, Metric::Cosine);
  const auto p = similarity_matrix(keys, Alignment::Rope, Metric::Cosine);
  const auto n = similarity_matrix(keys, Alignment::None, Metric::Cosine);
  CHECK((o - r).minCoeff() >= -1e-12);
  CHECK((r - p).minCoeff() >= -1e-12);
  CHECK((p.array() - n.array().abs().matrix().array()).minCoeff() >= -1e-12);  // θ = π flips the sign
  const auto joint = joint_similarity(keys, Alignment::Rope, values, Alignment::Orthogonal, Metric::Distance);
  CHECK((joint - similarity_matrix(keys, Alignment::Rope, Metric::Distance) -
         similarity_matrix(values, Alignment::Orthogonal, Metric::Distance))
            .cwiseAbs()
            .maxCoeff() < 1e-12);
  HeadGram<double> empty(h, d), other(h + 1, d, true);
  CHECK_THROWS_WITH(similarity_matrix(empty, Alignment::Orthogonal, Metric::Cosine), Catch::Contains("no tokens"));
  other.add(gaussian<double>(10, (h + 1) * d, rng));
  CHECK_THROWS_AS(joint_similarity(keys, Alignment::Rope, other, Alignment::Orthogonal, Metric::Cosine),
                  headalign::invalid_argument);
  CHECK_THROWS_AS(similarity_matrix(keys, Alignment::Rope, Metric::Cosine, RopeSpec{{}, 3}), headalign::invalid_argument);
}
