// Shared helpers of the test suite: seeded random matrices and scalar-aware tolerances.
#ifndef HEADALIGN_TEST_UTIL_HPP
#define HEADALIGN_TEST_UTIL_HPP

#include <headalign/config.hpp>
#include <headalign/rope.hpp>

#include <Eigen/QR>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>

namespace headalign::test {

/// Fixed-seed Gaussian matrix.
template <class S>
Matrix<S> gaussian(Index rows, Index cols, std::mt19937_64& rng, double stddev = 1.0) {
  std::normal_distribution<double> dist(0.0, stddev);
  Matrix<S> m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m(i, j) = static_cast<S>(dist(rng));
  return m;
}

/// Haar-random orthogonal matrix (QR of a Gaussian with the sign of R's diagonal fixed).
template <class S>
Matrix<S> random_orthogonal(Index d, std::mt19937_64& rng) {
  const Matrix<double> g = gaussian<double>(d, d, rng);
  Eigen::HouseholderQR<Matrix<double>> qr(g);
  Matrix<double> q = qr.householderQ();
  const Matrix<double> r = qr.matrixQR().template triangularView<Eigen::Upper>();
  for (Index i = 0; i < d; ++i)
    if (r(i, i) < 0) q.col(i) = -q.col(i);
  return q.cast<S>();
}

/// Random rotation (det = +1).
template <class S>
Matrix<S> random_rotation(Index d, std::mt19937_64& rng) {
  Matrix<S> q = random_orthogonal<S>(d, rng);
  if (q.determinant() < 0) q.col(0) = -q.col(0);
  return q;
}

/// Block rotation: one 2×2 rotation per RoPE plane, identity elsewhere.
template <class S>
Matrix<S> random_rope_rotation(Index d, const RopeSpec& rope, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> angle(-3.14159, 3.14159);
  Matrix<S> r = Matrix<S>::Identity(d, d);
  for (const auto& p : rope_planes(rope, d)) {
    const double t = angle(rng);
    r(p.first, p.first) = static_cast<S>(std::cos(t));
    r(p.first, p.second) = static_cast<S>(-std::sin(t));
    r(p.second, p.first) = static_cast<S>(std::sin(t));
    r(p.second, p.second) = static_cast<S>(std::cos(t));
  }
  return r;
}

/// Rounding tolerance for a computation over d terms of size `scale` in scalar S.
template <class S>
double tol(double d, double scale = 1.0) {
  return 50.0 * d * static_cast<double>(Eigen::NumTraits<S>::epsilon()) * scale;
}

/// ‖RᵀR − I‖_max.
template <class S>
double orthogonality_error(const Matrix<S>& r) {
  return static_cast<double>((r.transpose() * r - Matrix<S>::Identity(r.cols(), r.cols())).cwiseAbs().maxCoeff());
}

/// A scratch path in $TMPDIR (else /tmp): tests never write into the working directory.
inline std::string temp_path(const std::string& name) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir && *dir ? dir : "/tmp") + "/headalign_test_" + name;
}

}  // namespace headalign::test

#endif
