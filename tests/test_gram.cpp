// HeadGram: equality with the direct n-token computation, streaming, merging, files, bad input.
#include <headalign/gram.hpp>

#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <string>

using namespace headalign;
using headalign::test::gaussian;
using headalign::test::tol;

namespace {

// Direct X_iᵀ X_j on the stored activations, in double.
Matrix<double> direct_block(const Matrix<double>& x, Index d, Index i, Index j) {
  return x.middleCols(i * d, d).transpose() * x.middleCols(j * d, d);
}

Matrix<double> normalized_rows(Matrix<double> x, Index heads, Index d) {
  for (Index t = 0; t < x.rows(); ++t)
    for (Index h = 0; h < heads; ++h) {
      const double n = x.row(t).segment(h * d, d).norm();
      if (n > 0) x.row(t).segment(h * d, d) /= n;
    }
  return x;
}

template <class S>
double max_block_error(const HeadGram<S>& g, const Matrix<double>& x) {
  double err = 0;
  for (Index i = 0; i < g.num_heads(); ++i)
    for (Index j = 0; j < g.num_heads(); ++j)
      err = std::max(err, (g.block(i, j).template cast<double>() - direct_block(x, g.head_dim(), i, j)).cwiseAbs().maxCoeff());
  return err;
}

}  // namespace

TEMPLATE_TEST_CASE("HeadGram blocks equal the direct computation on the activations", "[gram]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(21);
  const Index h = 4, d = 6, n = 1000;
  const Matrix<double> x = gaussian<double>(n, h * d, rng);
  const double bound = tol<S>(n, 10.0);  // entries are sums of n products of O(1) values

  HeadGram<S> col(h, d, false, 64);  // column-major input of type S: SYRK in place
  col.add(x.cast<S>().eval());
  CHECK(col.tokens() == n);
  CHECK(max_block_error(col, x) < bound);

  using RowMajor = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMajor xr = x.cast<S>();
  HeadGram<S> row(h, d, false, 64);  // row-major in three uneven pieces
  row.add(xr.topRows(1));
  row.add(xr.middleRows(1, 500));
  row.add(xr.bottomRows(n - 501));
  CHECK(row.tokens() == n);
  CHECK(max_block_error(row, x) < bound);

  HeadGram<S> conv(h, d, false, 37);  // double input into any accumulator: converted in chunks
  conv.add(x);
  CHECK(max_block_error(conv, x) < bound);

  // Raw row-major buffer with padding between rows.
  std::vector<float> padded(static_cast<std::size_t>(n * (h * d + 3)), 7.f);
  for (Index t = 0; t < n; ++t)
    for (Index c = 0; c < h * d; ++c) padded[static_cast<std::size_t>(t * (h * d + 3) + c)] = static_cast<float>(x(t, c));
  HeadGram<S> raw(h, d);
  raw.add(padded.data(), n, h * d + 3);
  CHECK(max_block_error(raw, x.cast<float>().cast<double>()) < bound);

  // Symmetry of the blocks and of the full matrix.
  CHECK((col.block(1, 3) - col.block(3, 1).transpose()).cwiseAbs().maxCoeff() == S(0));
  CHECK((col.gram() - col.gram().transpose()).cwiseAbs().maxCoeff() == S(0));
  CHECK(std::abs(static_cast<double>(col.trace(2)) - direct_block(x, d, 2, 2).trace()) < bound * d);
}

TEMPLATE_TEST_CASE("normalize_rows accumulates unit-length head vectors", "[gram]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(22);
  const Index h = 3, d = 5, n = 300;
  Matrix<double> x = gaussian<double>(n, h * d, rng);
  x.row(7).segment(d, d).setZero();  // a zero head vector stays zero
  x.row(8) *= 1e15;                   // very long rows are normalised without overflow
  HeadGram<S> g(h, d, true, 50);
  g.add(x.cast<S>().eval());
  CHECK(max_block_error(g, normalized_rows(x, h, d)) < tol<S>(n, 1.0));
  // Each diagonal block's trace counts the non-zero token vectors.
  CHECK(std::abs(static_cast<double>(g.trace(1)) - (n - 1)) < tol<S>(n, 1.0));
}

TEMPLATE_TEST_CASE("merging two half accumulators equals one accumulator over all tokens", "[gram]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(23);
  const Index h = 3, d = 4, n = 400;
  const Matrix<S> x = gaussian<S>(n, h * d, rng);
  for (bool norm : {false, true}) {
    HeadGram<S> all(h, d, norm), a(h, d, norm), b(h, d, norm);
    all.add(x);
    a.add(x.topRows(150));
    b.add(x.bottomRows(n - 150));
    a.merge(b);
    CHECK(a.tokens() == n);
    CHECK((a.gram() - all.gram()).cwiseAbs().maxCoeff() < tol<S>(n, 10.0));
  }
  HeadGram<S> other(h, d + 1), normed(h, d, true), plain(h, d);
  CHECK_THROWS_AS(plain.merge(other), headalign::invalid_argument);
  CHECK_THROWS_WITH(plain.merge(normed), Catch::Contains("normalize_rows"));
}

TEMPLATE_TEST_CASE("from_gram takes a Gram accumulated elsewhere and reads only its lower triangle", "[gram]", float,
                   double) {
  using S = TestType;
  std::mt19937_64 rng(29);
  const Index h = 3, d = 4, n = 90;
  const Matrix<S> x = gaussian<S>(n, h * d, rng);
  for (bool norm : {false, true}) {
    HeadGram<S> direct(h, d, norm);
    direct.add(x);
    Matrix<S> stored = direct.gram();
    stored.template triangularView<Eigen::StrictlyUpper>().setConstant(S(-1e30));  // garbage above: ignored
    const HeadGram<S> g = HeadGram<S>::from_gram(stored, h, d, n, norm);
    CHECK(g.tokens() == n);
    CHECK(g.normalize_rows() == norm);
    CHECK(g.gram() == direct.gram());
    const Matrix<double> rows = norm ? normalized_rows(x.template cast<double>(), h, d) : x.template cast<double>();
    CHECK(max_block_error(g, rows) < tol<S>(n, 10.0));
    // It accumulates and merges like any other accumulator.
    HeadGram<S> more = HeadGram<S>::from_gram(stored, h, d, n, norm);
    more.add(x);
    HeadGram<S> twice(h, d, norm);
    twice.add(x);
    twice.add(x);
    CHECK((more.gram() - twice.gram()).cwiseAbs().maxCoeff() < tol<S>(2 * n, 10.0));
  }
  const Matrix<S> good = [&] {
    HeadGram<S> g(h, d);
    g.add(x);
    return g.gram();
  }();
  CHECK_THROWS_WITH(HeadGram<S>::from_gram(good.topLeftCorner(h * d - 1, h * d - 1), h, d, n), Catch::Contains("expected"));
  CHECK_THROWS_AS(HeadGram<S>::from_gram(good, h, d, -1), headalign::invalid_argument);
  Matrix<S> bad = good;
  bad(5, 2) = std::numeric_limits<S>::quiet_NaN();
  CHECK_THROWS_WITH(HeadGram<S>::from_gram(bad, h, d, n), Catch::Contains("NaN"));
  bad = good;
  bad(3, 3) = S(-1);
  CHECK_THROWS_WITH(HeadGram<S>::from_gram(bad, h, d, n), Catch::Contains("negative diagonal"));
  bad = good;
  bad(7, 1) = S(2) * std::sqrt(good(7, 7) * good(1, 1));
  CHECK_THROWS_WITH(HeadGram<S>::from_gram(bad, h, d, n), Catch::Contains("Cauchy"));
  bad = good;
  bad(1, 7) = S(2) * std::sqrt(good(7, 7) * good(1, 1));  // upper triangle: not read
  CHECK_NOTHROW(HeadGram<S>::from_gram(bad, h, d, n));
}

TEMPLATE_TEST_CASE("from_activations reads the reference's [H, n, d] layout", "[gram]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(24);
  const Index h = 3, d = 4, n = 77;
  const Matrix<double> x = gaussian<double>(n, h * d, rng);
  std::vector<float> hnd(static_cast<std::size_t>(h * n * d));
  for (Index i = 0; i < h; ++i)
    for (Index t = 0; t < n; ++t)
      for (Index c = 0; c < d; ++c) hnd[static_cast<std::size_t>((i * n + t) * d + c)] = static_cast<float>(x(t, i * d + c));
  const Matrix<double> xf = x.cast<float>().cast<double>();
  for (bool norm : {false, true}) {
    const auto g = HeadGram<S>::from_activations(hnd.data(), h, n, d, norm);
    CHECK(g.tokens() == n);
    CHECK(max_block_error(g, norm ? normalized_rows(xf, h, d) : xf) < tol<S>(n, 10.0));
  }
  hnd[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(HeadGram<S>::from_activations(hnd.data(), h, n, d), Catch::Contains("element 5"));
}

TEMPLATE_TEST_CASE("data-free Gram W Wᵀ is the per-token Gram of whitened inputs", "[gram]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(25);
  const Index h = 2, d = 3, hidden = 8, n = 64;
  const Matrix<double> w = gaussian<double>(h * d, hidden, rng);  // [H·d, hidden]
  // Whitened inputs: n × hidden with XᵀX = n·I exactly (orthonormal columns scaled by √n).
  Eigen::HouseholderQR<Matrix<double>> qr(gaussian<double>(n, hidden, rng));
  const Matrix<double> xin = std::sqrt(double(n)) * Matrix<double>(qr.householderQ()).leftCols(hidden);
  const Matrix<double> keys = xin * w.transpose();
  HeadGram<double> data(h, d);
  data.add(keys);
  const auto free = HeadGram<S>::from_weights(w.cast<S>(), h, d);
  CHECK(free.tokens() == 1);
  for (Index i = 0; i < h; ++i)
    for (Index j = 0; j < h; ++j) {
      const Matrix<double> expected = w.middleRows(i * d, d) * w.middleRows(j * d, d).transpose();
      CHECK((free.block(i, j).template cast<double>() - expected).cwiseAbs().maxCoeff() < tol<S>(hidden, 10.0));
      CHECK((data.block(i, j) / double(n) - expected).cwiseAbs().maxCoeff() < 1e-10);
    }
  CHECK_THROWS_WITH(HeadGram<S>::from_weights(w.topRows(5).cast<S>(), h, d), Catch::Contains("5 rows"));
}

TEST_CASE("HeadGram rejects bad input and loses nothing", "[gram][errors]") {
  HeadGram<double> g(4, 8);
  CHECK_THROWS_WITH(g.add(Matrix<double>::Ones(3, 31)), Catch::Contains("31 columns") && Catch::Contains("32"));
  Matrix<double> x = Matrix<double>::Ones(10, 32);
  g.add(x);
  const Matrix<double> before = g.gram();
  x(9, 31) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(g.add(x), Catch::Contains("NaN or Inf"));
  CHECK(g.tokens() == 10);
  CHECK(g.gram() == before);
  CHECK_THROWS_AS(g.block(4, 0), headalign::invalid_argument);
  CHECK_THROWS_AS(HeadGram<float>(0, 8), headalign::invalid_argument);
  CHECK_THROWS_AS(HeadGram<float>(2, -1), headalign::invalid_argument);
}
