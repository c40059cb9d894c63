// Procrustes solvers: orthogonality, optimality, RoPE commutation, SciPy parity, bad input.
#include <headalign/procrustes.hpp>
#include <headalign/rope.hpp>

#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

using namespace headalign;
using headalign::test::gaussian;
using headalign::test::orthogonality_error;
using headalign::test::random_orthogonal;
using headalign::test::random_rope_rotation;
using headalign::test::random_rotation;
using headalign::test::tol;

namespace {

const PolarMethod kMethods[] = {PolarMethod::Auto, PolarMethod::JacobiSvd, PolarMethod::Gesdd, PolarMethod::Newton,
#if HEADALIGN_HAS_BDCSVD
                                PolarMethod::BdcSvd
#endif
};

template <class S>
S trace_score(const Matrix<S>& r, const Matrix<S>& m) {
  return (r.transpose() * m).trace();
}

// Small skew-symmetric step: exp(εK) via the Cayley transform keeps the result orthogonal.
template <class S>
Matrix<S> small_rotation(Index d, std::mt19937_64& rng, double eps) {
  Matrix<double> k = gaussian<double>(d, d, rng);
  k = (k - k.transpose()).eval() * (0.5 * eps);
  const Matrix<double> i = Matrix<double>::Identity(d, d);
  return ((i - k).inverse() * (i + k)).cast<S>();
}

}  // namespace

TEMPLATE_TEST_CASE("orthogonal Procrustes is orthogonal and optimal for every polar method", "[procrustes]",
                   float, double) {
  using S = TestType;
  std::mt19937_64 rng(11);
  for (Index d : {1, 2, 3, 8, 33, 64}) {
    const Matrix<S> m = gaussian<S>(d, d, rng);
    // Independent reference: the nuclear norm from a double-precision Jacobi SVD.
    const double nuclear = Eigen::JacobiSVD<Matrix<double>>(m.template cast<double>()).singularValues().sum();
    for (PolarMethod method : kMethods) {
      CAPTURE(d, static_cast<int>(method));
      const auto res = procrustes(m, Alignment::Orthogonal, {}, {method});
      REQUIRE(res.rotation.rows() == d);
      CHECK(orthogonality_error(res.rotation) < tol<S>(d));
      CHECK(std::abs(static_cast<double>(res.score) - nuclear) < tol<S>(d, nuclear));
      CHECK(std::abs(static_cast<double>(trace_score<S>(res.rotation, m)) - nuclear) < tol<S>(d, nuclear));
      // No feasible R scores higher: random orthogonal matrices and small perturbations of R.
      for (int t = 0; t < 20; ++t) {
        const Matrix<S> q = random_orthogonal<S>(d, rng);
        CHECK(static_cast<double>(trace_score<S>(q, m)) <= nuclear + tol<S>(d, nuclear));
        const Matrix<S> p = res.rotation * small_rotation<S>(d, rng, 1e-2);
        CHECK(static_cast<double>(trace_score<S>(p, m)) <= nuclear + tol<S>(d, nuclear));
      }
    }
  }
}

TEMPLATE_TEST_CASE("Rotation has det +1, is optimal among rotations and never beats Orthogonal", "[procrustes]",
                   float, double) {
  using S = TestType;
  std::mt19937_64 rng(12);
  for (Index d : {2, 3, 5, 16, 40}) {
    for (int sign : {+1, -1}) {
      Matrix<S> m = gaussian<S>(d, d, rng);
      if ((m.template cast<double>().determinant() < 0) != (sign < 0)) m.col(0) = -m.col(0);
      for (PolarMethod method : kMethods) {
        CAPTURE(d, sign, static_cast<int>(method));
        const auto rot = procrustes(m, Alignment::Rotation, {}, {method});
        const auto orth = procrustes(m, Alignment::Orthogonal, {}, {method});
        const double scale = static_cast<double>(orth.score);
        CHECK(orthogonality_error(rot.rotation) < tol<S>(d));
        CHECK(std::abs(rot.rotation.template cast<double>().determinant() - 1.0) < tol<S>(d));
        CHECK(static_cast<double>(rot.score) <= scale + tol<S>(d, scale));
        CHECK(std::abs(static_cast<double>(rot.score - trace_score<S>(rot.rotation, m))) < tol<S>(d, scale));
        if (sign > 0) CHECK(std::abs(static_cast<double>(rot.score - orth.score)) < tol<S>(d, scale));
        const Vector<double> sigma = Eigen::JacobiSVD<Matrix<double>>(m.template cast<double>()).singularValues();
        const double expected = sign > 0 ? sigma.sum() : sigma.sum() - 2 * sigma(d - 1);
        CHECK(std::abs(static_cast<double>(rot.score) - expected) < tol<S>(d, scale));
        for (int t = 0; t < 20; ++t) {
          const Matrix<S> q = random_rotation<S>(d, rng);
          CHECK(static_cast<double>(trace_score<S>(q, m)) <= expected + tol<S>(d, scale));
          const Matrix<S> p = rot.rotation * small_rotation<S>(d, rng, 1e-2);
          CHECK(static_cast<double>(trace_score<S>(p, m)) <= expected + tol<S>(d, scale));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("RoPE Procrustes commutes with RoPE and is optimal among block rotations", "[procrustes][rope]",
                   float, double) {
  using S = TestType;
  std::mt19937_64 rng(13);
  std::uniform_int_distribution<int> pos(0, 4096);
  for (auto pairing : {RopeSpec::Pairing::HalfSplit, RopeSpec::Pairing::Interleaved}) {
    for (Index rot_dims : {0, 8, 12}) {
      const Index d = 16;
      const RopeSpec rope{pairing, rot_dims};
      CAPTURE(static_cast<int>(pairing), rot_dims);
      const Matrix<S> m = gaussian<S>(d, d, rng);
      const auto res = procrustes(m, Alignment::Rope, rope);
      const double scale = static_cast<double>(m.norm()) * d;
      CHECK(orthogonality_error(res.rotation) < tol<S>(d));
      CHECK(std::abs(static_cast<double>(res.score - trace_score<S>(res.rotation, m))) < tol<S>(d, scale));
      CHECK(std::abs(static_cast<double>(res.score - procrustes_score(m, Alignment::Rope, rope))) < tol<S>(d, scale));

      // Structure: zero outside the RoPE planes' 2×2 blocks (and the non-rotary block).
      const Index r = rotary_dims(rope, d);
      Matrix<S> mask = Matrix<S>::Zero(d, d);
      for (const auto& p : rope_planes(rope, d))
        for (Index a : {p.first, p.second})
          for (Index b : {p.first, p.second}) mask(a, b) = 1;
      mask.bottomRightCorner(d - r, d - r).setOnes();
      CHECK(res.rotation.cwiseProduct(Matrix<S>::Ones(d, d) - mask).cwiseAbs().maxCoeff() == S(0));
      // Rotary blocks are proper rotations.
      for (const auto& p : rope_planes(rope, d)) {
        const S c = res.rotation(p.first, p.first), s = res.rotation(p.second, p.first);
        CHECK(std::abs(static_cast<double>(c - res.rotation(p.second, p.second))) < tol<S>(1));
        CHECK(std::abs(static_cast<double>(s + res.rotation(p.first, p.second))) < tol<S>(1));
      }

      // Closed form == det-corrected 2×2 SVD of each plane's block.
      for (const auto& p : rope_planes(rope, d)) {
        Matrix<S> block(2, 2);
        block << m(p.first, p.first), m(p.first, p.second), m(p.second, p.first), m(p.second, p.second);
        Eigen::JacobiSVD<Matrix<double>> svd(block.template cast<double>(), Eigen::ComputeFullU | Eigen::ComputeFullV);
        Matrix<double> u = svd.matrixU();
        if ((u * svd.matrixV().transpose()).determinant() < 0) u.col(1) = -u.col(1);
        const Matrix<double> expected = u * svd.matrixV().transpose();
        Matrix<double> got(2, 2);
        got << res.rotation(p.first, p.first), res.rotation(p.first, p.second), res.rotation(p.second, p.first),
            res.rotation(p.second, p.second);
        CHECK((got - expected).cwiseAbs().maxCoeff() < tol<S>(4));
      }

      // No block rotation scores higher.
      for (int t = 0; t < 50; ++t) {
        Matrix<S> q = random_rope_rotation<S>(d, rope, rng);
        if (r < d) q.bottomRightCorner(d - r, d - r) = random_orthogonal<S>(d - r, rng);
        CHECK(static_cast<double>(trace_score<S>(q, m)) <= static_cast<double>(res.score) + tol<S>(d, scale));
      }

      // RoPE_m(Rᵀq)·RoPE_n(Rᵀk) = RoPE_m(q)·RoPE_n(k) at random positions.
      const Matrix<S> q = gaussian<S>(1, d, rng), k = gaussian<S>(1, d, rng);
      const Matrix<S> rq = q * res.rotation, rk = k * res.rotation;  // rows: (Rᵀq)ᵀ = qᵀR
      for (int t = 0; t < 10; ++t) {
        const double pm = pos(rng), pn = pos(rng);
        const S before = apply_rope(q, pm, rope).row(0).dot(apply_rope(k, pn, rope).row(0));
        const S after = apply_rope(rq, pm, rope).row(0).dot(apply_rope(rk, pn, rope).row(0));
        CHECK(std::abs(static_cast<double>(before - after)) < tol<S>(d, 10));
      }
    }
  }
}

TEMPLATE_TEST_CASE("procrustes_score equals the score of procrustes for every alignment", "[procrustes]", float,
                   double) {
  using S = TestType;
  std::mt19937_64 rng(14);
  for (Index d : {4, 10, 32}) {
    const Matrix<S> m = gaussian<S>(d, d, rng);
    for (Alignment a : {Alignment::None, Alignment::Orthogonal, Alignment::Rotation, Alignment::Rope}) {
      for (PolarMethod method : kMethods) {
        const double s1 = static_cast<double>(procrustes(m, a, {}, {method}).score);
        const double s2 = static_cast<double>(procrustes_score(m, a, {}, {method}));
        CHECK(std::abs(s1 - s2) < tol<S>(d, static_cast<double>(m.norm()) * d));
      }
    }
    CHECK(procrustes(m, Alignment::None).rotation == Matrix<S>::Identity(d, d));
    CHECK(procrustes_score(m, Alignment::None) == m.trace());
  }
}

TEMPLATE_TEST_CASE("degenerate matrices give orthogonal results, never NaN", "[procrustes]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(15);
  const Index d = 12;
  std::vector<Matrix<S>> cases;
  cases.push_back(Matrix<S>::Zero(d, d));                                               // zero
  cases.push_back(gaussian<S>(d, 3, rng) * gaussian<S>(3, d, rng));                     // rank 3
  cases.push_back(S(2.5) * random_orthogonal<S>(d, rng));                               // all σ equal
  cases.push_back(Matrix<S>::Identity(d, d));                                           // identity
  Matrix<S> rep = random_orthogonal<S>(d, rng) * Vector<S>::LinSpaced(d, 1, 1).asDiagonal();
  rep.col(0) *= S(1e-30);
  cases.push_back(rep);                                                                 // near-singular
  cases.push_back(gaussian<S>(d, 1, rng) * gaussian<S>(1, d, rng) * S(1e20));           // rank 1, huge
  for (std::size_t c = 0; c < cases.size(); ++c) {
    for (Alignment a : {Alignment::Orthogonal, Alignment::Rotation, Alignment::Rope}) {
      for (PolarMethod method : kMethods) {
        CAPTURE(c, static_cast<int>(a), static_cast<int>(method));
        const auto res = procrustes(cases[c], a, {}, {method});
        REQUIRE(res.rotation.allFinite());
        CHECK(orthogonality_error(res.rotation) < tol<S>(d));
        if (a == Alignment::Rotation) CHECK(std::abs(res.rotation.template cast<double>().determinant() - 1) < tol<S>(d));
        const double nuclear =
            Eigen::JacobiSVD<Matrix<double>>(cases[c].template cast<double>()).singularValues().sum();
        if (a == Alignment::Orthogonal)
          CHECK(std::abs(static_cast<double>(res.score) - nuclear) <= tol<S>(d, nuclear));
        CHECK(std::isfinite(static_cast<double>(procrustes_score(cases[c], a))));
      }
    }
  }
}

TEMPLATE_TEST_CASE("extreme magnitudes: the transform depends only on M's direction", "[procrustes]", float, double) {
  // Found by fuzz_convert (fuzz/regressions/convert): a float M of about 1e-22 gave a RoPE
  // "rotation" far from orthogonal (the 2×2 closed form divided subnormal numbers) and Newton's
  // inverse of tiny M overflowed. M is now scaled by a power of two first (exactly).
  using S = TestType;
  std::mt19937_64 rng(16);
  const Index d = 8;
  const Matrix<S> m = gaussian<S>(d, d, rng);
  const int lowest = std::numeric_limits<S>::min_exponent, highest = std::numeric_limits<S>::max_exponent;
  for (int e : {lowest + 30, lowest / 2, -40, 40, highest / 2, highest - 10}) {
    const Matrix<S> scaled = m * std::ldexp(S(1), e);  // exact: every entry stays normal
    for (Alignment a : {Alignment::Orthogonal, Alignment::Rotation, Alignment::Rope}) {
      for (PolarMethod method : kMethods) {
        CAPTURE(e, static_cast<int>(a), static_cast<int>(method));
        const auto base = procrustes(m, a, {}, {method});
        const auto res = procrustes(scaled, a, {}, {method});
        REQUIRE(res.rotation.allFinite());
        CHECK(orthogonality_error(res.rotation) < tol<S>(d));
        CHECK((res.rotation - base.rotation).cwiseAbs().maxCoeff() <= tol<S>(d));
        const double expected = std::ldexp(static_cast<double>(base.score), e);
        CHECK(std::abs(static_cast<double>(res.score) - expected) <= tol<S>(d, std::abs(expected)));
        const double score = static_cast<double>(procrustes_score(scaled, a, {}, {method}));
        CHECK(std::abs(score - expected) <= tol<S>(d, std::abs(expected)));
      }
    }
  }
  // Subnormal entries (float: below 1.2e-38) keep few bits, but R is still orthogonal.
  const Matrix<S> tiny = m * std::numeric_limits<S>::denorm_min() * S(64);
  for (Alignment a : {Alignment::Orthogonal, Alignment::Rotation, Alignment::Rope}) {
    CAPTURE(static_cast<int>(a));
    const auto res = procrustes(tiny, a);
    REQUIRE(res.rotation.allFinite());
    CHECK(orthogonality_error(res.rotation) < tol<S>(d));
  }
}

TEST_CASE("orthogonal_procrustes matches SciPy", "[procrustes][scipy]") {
  std::ifstream in(HEADALIGN_TEST_DATA_DIR "/scipy_procrustes_cases.txt");
  REQUIRE(in.good());
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    if (line.rfind("case", 0) != 0) continue;
    std::istringstream head(line.substr(4));
    Index n = 0, d = 0;
    head >> n >> d;
    auto read = [&](Index rows, Index cols) {
      Matrix<double> m(rows, cols);
      for (Index i = 0; i < rows; ++i)
        for (Index j = 0; j < cols; ++j) in >> m(i, j);
      return m;
    };
    const Matrix<double> a = read(n, d), b = read(n, d), r = read(d, d);
    double scale = 0;
    in >> scale;
    for (PolarMethod method : kMethods) {
      CAPTURE(n, d, static_cast<int>(method));
      const auto res = orthogonal_procrustes(a, b, {method});
      CHECK((res.rotation - r).cwiseAbs().maxCoeff() < 1e-10);
      CHECK(std::abs(res.score - scale) < 1e-10 * scale);
      const auto resf = orthogonal_procrustes(a.cast<float>().eval(), b.cast<float>().eval(), {method});
      CHECK((resf.rotation.cast<double>() - r).cwiseAbs().maxCoeff() < 1e-3);
    }
    ++cases;
  }
  CHECK(cases == 6);
}

TEST_CASE("bad input throws invalid_argument naming the values", "[procrustes][errors]") {
  const Matrix<double> rect = Matrix<double>::Ones(3, 4);
  REQUIRE_THROWS_AS(procrustes(rect), headalign::invalid_argument);
  REQUIRE_THROWS_WITH(procrustes(rect), Catch::Contains("3 × 4"));
  REQUIRE_THROWS_AS(procrustes_score(rect, Alignment::Orthogonal), std::invalid_argument);
  Matrix<double> nan = Matrix<double>::Identity(4, 4);
  nan(1, 2) = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(procrustes(nan), Catch::Contains("NaN"));
  Matrix<float> inf = Matrix<float>::Identity(4, 4);
  inf(0, 0) = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_AS(procrustes(inf, Alignment::Rope), headalign::invalid_argument);
  const Matrix<double> odd = Matrix<double>::Identity(5, 5);
  REQUIRE_THROWS_WITH(procrustes(odd, Alignment::Rope), Catch::Contains("rotary_dims (5)"));
  REQUIRE_THROWS_WITH(procrustes(Matrix<double>::Identity(8, 8).eval(), Alignment::Rope, RopeSpec{{}, 3}),
                      Catch::Contains("rotary_dims (3)"));
  REQUIRE_THROWS_WITH(procrustes(Matrix<double>::Identity(8, 8).eval(), Alignment::Rope, RopeSpec{{}, 10}),
                      Catch::Contains("rotary_dims (10)"));
  REQUIRE_NOTHROW(procrustes(odd, Alignment::Rope, RopeSpec{{}, 4}));  // partial rotary on odd d is fine
#if !HEADALIGN_HAS_BDCSVD
  REQUIRE_THROWS_WITH(procrustes(odd, Alignment::Orthogonal, {}, {PolarMethod::BdcSvd}),
                      Catch::Contains("HEADALIGN_ENABLE_BDCSVD"));
#endif
  const Matrix<double> a = Matrix<double>::Ones(5, 3), b = Matrix<double>::Ones(4, 3);
  REQUIRE_THROWS_WITH(orthogonal_procrustes(a, b), Catch::Contains("5 × 3") && Catch::Contains("4 × 3"));
}

TEMPLATE_TEST_CASE("Auto on well-conditioned M (the Newton fast path with LAPACKE) equals the SVD's polar factor",
                   "[procrustes]", float, double) {
  // M = U diag(σ) Vᵀ with σ in [1, 2] (κ ≤ 2, where Auto iterates instead of calling ?gesdd):
  // the polar factor is U Vᵀ exactly, the best rotation flips the last column of U when
  // det(U Vᵀ) < 0, and the scores are Σσ and Σσ − 2σ_min.
  using S = TestType;
  std::mt19937_64 rng(91);
  for (Index d : {16, 48, 128}) {
    for (bool reflect : {false, true}) {
      Matrix<double> u = random_orthogonal<double>(d, rng), v = random_orthogonal<double>(d, rng);
      if ((u.determinant() * v.determinant() < 0) != reflect) u.col(0) = -u.col(0);
      Vector<double> sigma(d);
      for (Index i = 0; i < d; ++i) sigma(i) = 2.0 - static_cast<double>(i) / static_cast<double>(d);  // descending
      const Matrix<S> m = (u * sigma.asDiagonal() * v.transpose()).cast<S>();
      CAPTURE(d, reflect);
      const auto orth = procrustes(m, Alignment::Orthogonal);
      CHECK((orth.rotation.template cast<double>() - u * v.transpose()).cwiseAbs().maxCoeff() < tol<S>(d));
      CHECK(std::abs(static_cast<double>(orth.score) - sigma.sum()) < tol<S>(d, sigma.sum()));
      CHECK(orthogonality_error(orth.rotation) < tol<S>(d));
      Matrix<double> u_rot = u;
      if (reflect) u_rot.col(d - 1) = -u_rot.col(d - 1);
      const auto rot = procrustes(m, Alignment::Rotation);
      CHECK((rot.rotation.template cast<double>() - u_rot * v.transpose()).cwiseAbs().maxCoeff() < tol<S>(d));
      CHECK(std::abs(static_cast<double>(rot.score) - (sigma.sum() - (reflect ? 2.0 * sigma(d - 1) : 0.0))) <
            tol<S>(d, sigma.sum()));
      CHECK(rot.rotation.template cast<double>().determinant() > 0);
      // Auto and the explicit SVD agree.
      const auto svd = procrustes(m, Alignment::Orthogonal, {}, {PolarMethod::JacobiSvd});
      CHECK((orth.rotation - svd.rotation).cwiseAbs().maxCoeff() < tol<S>(d));
    }
  }
}
