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

#if HEADALIGN_SIMD_BIDIAGONAL
TEMPLATE_TEST_CASE("SIMD bidiagonal singular values equal a Jacobi SVD; determinant signs equal LU's", "[similarity][simd]",
                   float, double) {
  using S = TestType;
  constexpr int width = detail::simd_bidiagonal_width<S>();
  if (!detail::simd_bidiagonal_available()) {
    WARN("this CPU has no AVX2/FMA: the SIMD path is not used and not tested here");
    return;
  }
  std::mt19937_64 rng(77);
  const S eps = std::numeric_limits<S>::epsilon();
  const S big = std::is_same<S, float>::value ? S(1e30) : S(1e250);
  const S tiny = std::is_same<S, float>::value ? S(1e-30) : S(1e-250);
  for (Index n : {1, 2, 3, 5, 8, 17, 64, 128}) {
    // Varied matrices, including ones whose reflectors are trivial (x = 0) or whose values
    // would overflow or underflow when squared without the power-of-two scaling.
    std::vector<Matrix<S>> mats;
    mats.push_back(gaussian<S>(n, n, rng));
    mats.push_back(Matrix<S>::Zero(n, n));
    mats.push_back(Matrix<S>::Identity(n, n));
    Matrix<S> diag = Matrix<S>::Zero(n, n);
    for (Index i = 0; i < n; ++i) diag(i, i) = static_cast<S>(i % 3 == 1 ? -(i + 1) : (i + 1));
    mats.push_back(diag);
    const Index rank = std::max<Index>(1, n / 2);
    mats.push_back(gaussian<S>(n, rank, rng) * gaussian<S>(rank, n, rng));  // rank-deficient
    mats.push_back(gaussian<S>(n, n, rng) * big);
    mats.push_back(gaussian<S>(n, n, rng) * tiny);
    Matrix<S> reflected = random_orthogonal<S>(n, rng) * (S(1) + gaussian<S>(n, n, rng).cwiseAbs().array() * S(0.01)).matrix();
    reflected.col(0) *= S(-1);
    mats.push_back(reflected);
    Matrix<S> zero_col = gaussian<S>(n, n, rng);
    zero_col.col(n / 2).setZero();
    mats.push_back(zero_col);
    // Blocks of a larger column-major array (leading dimension 2n + 1), as similarity_matrix() reads them.
    const Index ld = 2 * n + 1;
    Matrix<S> store(ld, n * static_cast<Index>(mats.size()));
    store.setConstant(std::numeric_limits<S>::quiet_NaN());  // outside the blocks: never read
    for (std::size_t t = 0; t < mats.size(); ++t) store.block(1, static_cast<Index>(t) * n, n, n) = mats[t];
    for (std::size_t first = 0; first < mats.size(); first += width) {
      const int count = static_cast<int>(std::min<std::size_t>(width, mats.size() - first));
      const S* blocks[width];
      for (int l = 0; l < count; ++l) blocks[l] = store.data() + 1 + (static_cast<Index>(first) + l) * n * ld;
      std::vector<Vector<S>> sigma;
      std::vector<int> sign;
      REQUIRE(detail::simd_singular_values<S>(blocks, count, n, ld, sigma, sign));
      REQUIRE(sigma.size() == static_cast<std::size_t>(count));
      for (int l = 0; l < count; ++l) {
        const Matrix<S>& m = mats[first + static_cast<std::size_t>(l)];
        CAPTURE(n, first + static_cast<std::size_t>(l));
        const Vector<double> expected = Eigen::JacobiSVD<Matrix<double>>(m.template cast<double>()).singularValues();
        const double smax = expected.size() ? expected(0) : 0.0;
        const Vector<S>& got = sigma[static_cast<std::size_t>(l)];
        REQUIRE(got.size() == n);
        for (Index i = 0; i < n; ++i) CHECK(std::abs(static_cast<double>(got(i)) - expected(i)) <= 4.0 * n * eps * smax);
        // Determinant sign: compare with LU where the matrix is far from singular.
        const Eigen::PartialPivLU<Matrix<double>> lu(m.template cast<double>());
        if (smax > 0 && expected(n - 1) > 1e-3 * smax) CHECK(sign[static_cast<std::size_t>(l)] == detail::lu_det_sign<double>(lu));
      }
    }
  }
  // No lanes, too many lanes, or an empty matrix: not handled here (the caller's one-matrix path).
  const S* none[1] = {nullptr};
  std::vector<Vector<S>> sigma;
  std::vector<int> sign;
  CHECK_FALSE(detail::simd_singular_values<S>(none, 0, 4, 4, sigma, sign));
  CHECK_FALSE(detail::simd_singular_values<S>(none, 1, 0, 1, sigma, sign));
}
#endif

TEMPLATE_TEST_CASE("similarity_matrix: the batched path equals the one-pair path", "[similarity][simd]", float, double) {
  using S = TestType;
  // 9 heads = 36 pairs: full batches and a partial one for both widths. Head 1 is head 0
  // reflected, so its rotation score needs the determinant correction.
  std::mt19937_64 rng(78);
  const Index h = 9, d = 16, n = 400;
  Matrix<double> x = gaussian<double>(n, h * d, rng);
  Matrix<double> flip = random_orthogonal<double>(d, rng);
  flip.col(0) *= -1.0;
  x.middleCols(d, d) = x.middleCols(0, d) * flip + 0.1 * gaussian<double>(n, d, rng);
  for (bool normalize : {true, false}) {
    HeadGram<S> g(h, d, normalize);
    g.add(x.cast<S>().eval());
    for (Alignment al : {Alignment::Orthogonal, Alignment::Rotation})
      for (Metric metric : {Metric::Cosine, Metric::Distance}) {
        CAPTURE(normalize, static_cast<int>(al), static_cast<int>(metric));
        const Matrix<S> fast = similarity_matrix(g, al, metric);
        const Matrix<S> one = similarity_matrix(g, al, metric, {}, {PolarMethod::JacobiSvd});
        const double scale = metric == Metric::Distance ? 4.0 * d : 1.0;
        CHECK((fast - one).cwiseAbs().maxCoeff() < tol<S>(n, scale));
        CHECK(fast.diagonal().cwiseAbs().maxCoeff() == S(0));
        CHECK((fast - fast.transpose()).cwiseAbs().maxCoeff() == S(0));
      }
    // The reflected pair: its best rotation scores 2σ_min less than its best orthogonal transform.
    const Matrix<S> o = similarity_matrix(g, Alignment::Orthogonal, Metric::Cosine);
    const Matrix<S> r = similarity_matrix(g, Alignment::Rotation, Metric::Cosine);
    CHECK(o(0, 1) - r(0, 1) > S(0.01));
  }
}
