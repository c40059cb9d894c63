// xtensor interop: zero-copy views both ways, and the entry points on xtensor expressions give
// exactly what the Eigen path gives.
#include <headalign/interop/xtensor.hpp>

#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <xtensor/xmath.hpp>
#include <xtensor/xrandom.hpp>
#include <xtensor/xview.hpp>

using namespace headalign;

namespace {

// An xtensor copy of an Eigen matrix, element by element (independent of to_xtensor).
xt::xtensor<double, 2> copy_of(const Matrix<double>& m) {
  xt::xtensor<double, 2> t({static_cast<std::size_t>(m.rows()), static_cast<std::size_t>(m.cols())});
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) t(static_cast<std::size_t>(i), static_cast<std::size_t>(j)) = m(i, j);
  return t;
}

}  // namespace

TEST_CASE("views share memory both ways", "[xtensor]") {
  xt::xtensor<double, 2> t = {{1, 2, 3}, {4, 5, 6}};
  auto e = as_eigen(t);
  CHECK(e.data() == t.data());  // no copy
  CHECK(e(1, 2) == 6);
  e(0, 1) = 20;
  CHECK(t(0, 1) == 20);
  xt::xarray<float> a = xt::ones<float>({4, 2});
  CHECK(as_eigen(a).data() == a.data());
  xt::xarray<float> three = xt::ones<float>({2, 2, 2});
  CHECK_THROWS_AS(as_eigen(three), invalid_argument);
  xt::xtensor<double, 2, xt::layout_type::column_major> cm = {{1, 2}, {3, 4}};
  CHECK_THROWS_AS(as_eigen(cm), invalid_argument);

  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm(2, 3);
  rm << 1, 2, 3, 4, 5, 6;
  auto v = as_xtensor(rm);
  CHECK(v.data() == rm.data());
  CHECK(v(1, 0) == 4);
  Matrix<double> colmajor(2, 3);
  colmajor << 1, 2, 3, 4, 5, 6;
  auto w = as_xtensor(colmajor);
  CHECK(w.data() == colmajor.data());
  CHECK(w(0, 2) == 3);
  CHECK(w(1, 1) == 5);
  w(1, 1) = 50;
  CHECK(colmajor(1, 1) == 50);
  const auto back = to_xtensor(colmajor);
  CHECK(back(1, 1) == 50);
  CHECK(back.shape()[1] == 3);
}

TEST_CASE("procrustes, scores and SciPy's orthogonal_procrustes equal the Eigen path", "[xtensor]") {
  std::mt19937_64 rng(21);
  const Matrix<double> m = test::gaussian<double>(8, 8, rng);
  const xt::xtensor<double, 2> xm = copy_of(m);
  for (Alignment al : {Alignment::Orthogonal, Alignment::Rotation, Alignment::Rope, Alignment::None}) {
    const auto a = procrustes(xm, al), b = procrustes(m, al);
    CHECK(a.rotation == b.rotation);
    CHECK(a.score == b.score);
    CHECK(procrustes_score(xm, al) == procrustes_score(m, al));
  }
  // A lazy expression (a transpose, then scaled) is evaluated once and gives the same answer.
  const auto lazy = procrustes(2.0 * xt::transpose(xm), Alignment::Orthogonal);
  const auto eager = procrustes(Matrix<double>(2.0 * m.transpose()), Alignment::Orthogonal);
  CHECK((lazy.rotation - eager.rotation).cwiseAbs().maxCoeff() < 1e-14);
  // A R ≈ B with a planted rotation.
  const Matrix<double> a = test::gaussian<double>(50, 6, rng), r = test::random_orthogonal<double>(6, rng);
  const Matrix<double> bm = a * r;
  const auto sol = orthogonal_procrustes(copy_of(a), copy_of(bm));
  CHECK((sol.rotation - r).cwiseAbs().maxCoeff() < 1e-10);
  CHECK(sol.rotation == orthogonal_procrustes(a, bm).rotation);
  CHECK_THROWS_AS(procrustes(xt::xtensor<double, 2>({3, 4})), invalid_argument);  // not square
  CHECK_THROWS_AS(procrustes(xt::xtensor<double, 3>({2, 2, 2})), invalid_argument);
}

TEST_CASE("HeadGram::add and similarities from [H, n, d] activations equal the Eigen path", "[xtensor]") {
  std::mt19937_64 rng(22);
  const Index h = 4, d = 3, n = 40;
  const Matrix<double> x = test::gaussian<double>(n, h * d, rng);
  HeadGram<double> ge(h, d), gx(h, d), gf(h, d);
  ge.add(x);
  add(gx, copy_of(x));                                       // in place
  add(gf, xt::cast<float>(copy_of(x)));                      // a lazy float expression
  CHECK(gx.gram() == ge.gram());
  CHECK((gf.gram() - ge.gram()).cwiseAbs().maxCoeff() < 1e-4);
  CHECK(gx.tokens() == n);

  // [H, n, d] activations, the reference's layout.
  xt::xtensor<double, 3> act({static_cast<std::size_t>(h), static_cast<std::size_t>(n), static_cast<std::size_t>(d)});
  for (Index i = 0; i < h; ++i)
    for (Index t = 0; t < n; ++t)
      for (Index c = 0; c < d; ++c)
        act(static_cast<std::size_t>(i), static_cast<std::size_t>(t), static_cast<std::size_t>(c)) = x(t, i * d + c);
  const HeadGram<double> ga = gram_from_activations<double>(act);
  CHECK((ga.gram() - ge.gram()).cwiseAbs().maxCoeff() < 1e-12);
  const auto sx = similarity_matrix(act, Alignment::Orthogonal, Metric::Cosine);
  HeadGram<double> gn(h, d, true);
  gn.add(x);
  const Matrix<double> se = similarity_matrix(gn, Alignment::Orthogonal, Metric::Cosine);
  REQUIRE(sx.shape()[0] == static_cast<std::size_t>(h));
  for (Index i = 0; i < h; ++i)
    for (Index j = 0; j < h; ++j) CHECK(sx(static_cast<std::size_t>(i), static_cast<std::size_t>(j)) == Approx(se(i, j)).epsilon(1e-12));
  CHECK(similarity_xtensor(gn, Alignment::Orthogonal, Metric::Cosine)(1, 2) == se(1, 2));
  CHECK_THROWS_AS(add(gx, xt::xtensor<double, 2>({2, 5})), invalid_argument);  // wrong width
  CHECK_THROWS_AS(gram_from_activations<double>(copy_of(x)), invalid_argument);  // not 3-D
}
