// The CUDA backend's host side, which needs no GPU: argument validation (it throws before any
// device work), the error macro, and the scalar math the kernels share with the host — the RoPE
// plane rotation and the scaled Newton–Schulz schedule, run here as the documented algorithm on
// Eigen matrices against the SVD-based polar factor.
#include <headalign/cuda/backend.cuh>
#include <headalign/procrustes.hpp>

#include <catch2/catch.hpp>

#include "../test_util.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace headalign;
namespace hc = headalign::cuda;

TEMPLATE_TEST_CASE("rope_plane is the closed-form Procrustes solution of each RoPE plane", "[cuda][host]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(11);
  for (int t = 0; t < 200; ++t) {
    const Matrix<S> m = test::gaussian<S>(2, 2, rng);
    const auto cpu = procrustes(m, Alignment::Rope);  // d = 2: one plane (0, 1)
    const auto p = hc::rope_plane<S>(m(0, 0), m(0, 1), m(1, 0), m(1, 1));
    const S tol = std::is_same<S, float>::value ? S(2e-6) : S(1e-14);
    CHECK(std::abs(p.c - cpu.rotation(0, 0)) <= tol);
    CHECK(std::abs(-p.s - cpu.rotation(0, 1)) <= tol);
    CHECK(std::abs(p.s - cpu.rotation(1, 0)) <= tol);
    CHECK(std::abs(p.score - cpu.score) <= tol * (1 + std::abs(cpu.score)));
    // The score is tr(Rᵀ m) of the returned rotation, and c² + s² = 1.
    CHECK(std::abs(p.c * (m(0, 0) + m(1, 1)) + p.s * (m(1, 0) - m(0, 1)) - p.score) <= 4 * tol * (1 + std::abs(p.score)));
    CHECK(std::abs(p.c * p.c + p.s * p.s - S(1)) <= 4 * std::numeric_limits<S>::epsilon());
  }
  const auto zero = hc::rope_plane<S>(0, 0, 0, 0);
  CHECK(zero.c == S(1));
  CHECK(zero.s == S(0));
  CHECK(zero.score == S(0));
  // Entries near the largest finite value: the sums of halves do not overflow.
  const S big = std::numeric_limits<S>::max() / 2;
  const auto huge = hc::rope_plane<S>(big, -big, big, big);
  CHECK(std::isfinite(huge.c));
  CHECK(std::isfinite(huge.s));
  CHECK(std::abs(huge.c - std::sqrt(S(0.5))) <= S(1e-6));
  CHECK(std::abs(huge.s - std::sqrt(S(0.5))) <= S(1e-6));
}

TEST_CASE("the scaled Newton–Schulz schedule takes [l0, 1] to within the tolerance of 1", "[cuda][host]") {
  for (double l0 : {1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8}) {
    for (double tol : {4 * 0x1p-24, 4 * 0x1p-53}) {
      const std::vector<double> alphas = hc::newton_schulz_scalings(l0, tol);
      // Every singular value in [l0, 1] (sampled on a log grid, ends included) ends in [1 − tol', 1].
      for (int i = 0; i <= 400; ++i) {
        double x = std::exp(std::log(l0) * (1.0 - i / 400.0));
        for (double a : alphas) x = hc::newton_schulz_map(x, a);
        CHECK(x <= 1.0 + 1e-15);
        CHECK(x >= 1.0 - 2 * tol);
      }
      // The scaled steps beat the plain cubic iteration (×1.5 per step) by far for small l0:
      // about log(1/l0)/log(2.6) steps, then the quadratic finish.
      CHECK(static_cast<double>(alphas.size()) <= std::log(1 / l0) / std::log(2.5) + 8);
      for (double a : alphas) {
        CHECK(a >= 1.0);
        CHECK(a <= std::sqrt(3.0));
      }
    }
  }
  CHECK_THROWS_AS(hc::newton_schulz_scalings(0.0, 1e-6), headalign::invalid_argument);
  CHECK_THROWS_AS(hc::newton_schulz_scalings(1e-3, 0.0), headalign::invalid_argument);
}

// The device algorithm, step for step, on the host: X₀ = M/‖M‖_F, X ← X(1.5α I − 0.5α³ XᵀX).
template <class S>
Matrix<S> newton_schulz_polar(const Matrix<S>& m, const std::vector<double>& alphas, int extra) {
  Matrix<S> x = m / m.norm();
  const Index d = m.rows();
  const Matrix<S> eye = Matrix<S>::Identity(d, d);
  auto step = [&](double a) {
    const Matrix<S> p = x.transpose() * x;
    x = x * (S(1.5 * a) * eye - S(0.5 * a * a * a) * p);
  };
  for (double a : alphas) step(a);
  for (int i = 0; i < extra; ++i) step(1.0);
  return x;
}

TEMPLATE_TEST_CASE("the Newton–Schulz algorithm of the GPU gives the polar factor", "[cuda][host]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(5);
  hc::PolarOptions o;
  const hc::PolarOptions r = hc::detail::resolved<S>(o, 64, 1, true, true);
  const std::vector<double> alphas = hc::detail::schedule<S>(r);
  for (Index d : {8, 64, 128}) {
    // Planted M = U diag(s) Vᵀ with σ_min/‖M‖_F above the default lower bound: R = U Vᵀ exactly.
    const Matrix<double> u = test::random_orthogonal<double>(d, rng), v = test::random_orthogonal<double>(d, rng);
    Vector<double> s(d);
    for (Index i = 0; i < d; ++i) s(i) = std::pow(10.0, -2.0 * static_cast<double>(i) / static_cast<double>(d - 1));
    const Matrix<S> m = (u * s.asDiagonal() * v.transpose()).cast<S>();
    const Matrix<S> x = newton_schulz_polar<S>(m, alphas, 1);
    const Matrix<double> expected = u * v.transpose();
    const double eps = std::numeric_limits<S>::epsilon();
    const double orth = (x.transpose() * x - Matrix<S>::Identity(d, d)).template cast<double>().norm();
    INFO("d = " << d << ", " << alphas.size() << " scheduled steps, ‖XᵀX − I‖_F = " << orth);
    CHECK(orth <= 20 * eps * static_cast<double>(d));
    CHECK((x.template cast<double>() - expected).norm() <= 1e3 * eps * static_cast<double>(d));
    const double score = (x.transpose() * m).trace();
    CHECK(std::abs(score - s.sum()) <= 50 * eps * s.sum());
    // And the same as the CPU library's SVD-based Procrustes.
    const auto cpu = procrustes(m.template cast<double>().eval());
    CHECK((x.template cast<double>() - cpu.rotation).norm() <= 1e3 * eps * static_cast<double>(d));
  }
}

TEST_CASE("procrustes_batched and DeviceGram refuse bad arguments before any device work", "[cuda][host]") {
  hc::Context ctx;  // creates no handle until used
  float* const fake = reinterpret_cast<float*>(std::uintptr_t(4096));  // never dereferenced: validation throws first
  double* const fake_d = reinterpret_cast<double*>(std::uintptr_t(4096));
  auto call = [&](Index d, Index batch, hc::PolarOptions o, const float* m = nullptr, float* r = nullptr, float* s = nullptr) {
    return hc::procrustes_batched<float>(ctx, m ? m : fake, r, s ? s : fake, d, batch, nullptr, o);
  };
  hc::PolarOptions o;
  CHECK_THROWS_AS(call(0, 4, o), headalign::invalid_argument);
  CHECK_THROWS_AS(call(-3, 4, o), headalign::invalid_argument);
  CHECK_THROWS_AS(call(8, -1, o), headalign::invalid_argument);
  CHECK_THROWS_AS(call(50000, 1, o), headalign::invalid_argument);
  CHECK_THROWS_AS(hc::procrustes_batched<float>(ctx, static_cast<const float*>(nullptr), fake, fake, 8, 4, nullptr, o),
                  headalign::invalid_argument);
  CHECK_THROWS_AS(hc::procrustes_batched<float>(ctx, fake, nullptr, nullptr, 8, 4, nullptr, o), headalign::invalid_argument);
  hc::PolarOptions batched;
  batched.method = hc::PolarMethod::GesvdjBatched;
  CHECK_THROWS_WITH(call(64, 4, batched), Catch::Contains("32 × 32"));
  hc::PolarOptions tf32;
  tf32.tf32 = true;
  CHECK_THROWS_WITH(hc::procrustes_batched<double>(ctx, fake_d, fake_d, fake_d, 8, 4, nullptr, tf32), Catch::Contains("TF32"));
  tf32.method = hc::PolarMethod::GesvdjLoop;
  CHECK_THROWS_WITH(call(8, 4, tf32), Catch::Contains("TF32"));
  hc::PolarOptions rope;
  rope.method = hc::PolarMethod::Rope;
  rope.rope.rotary_dims = 3;
  CHECK_THROWS_WITH(call(8, 4, rope), Catch::Contains("rotary_dims"));
  rope.rope.rotary_dims = 10;
  CHECK_THROWS_WITH(call(8, 4, rope), Catch::Contains("rotary_dims"));
  hc::PolarOptions bad = o;
  bad.lower_bound = 2;
  CHECK_THROWS_AS(call(8, 4, bad), headalign::invalid_argument);
  bad = o;
  bad.tolerance = 1;
  CHECK_THROWS_AS(call(8, 4, bad), headalign::invalid_argument);
  bad = o;
  bad.max_iterations = -1;
  CHECK_THROWS_AS(call(8, 4, bad), headalign::invalid_argument);
  bad = o;
  bad.scratch_bytes = 0;
  CHECK_THROWS_AS(call(8, 4, bad), headalign::invalid_argument);
  // An empty batch is valid and touches nothing.
  const hc::PolarReport empty = call(8, 0, o);
  CHECK(empty.checked);
  CHECK(empty.converged);
  CHECK(empty.not_converged == 0);

  CHECK_THROWS_AS(hc::DeviceGram<float>(0, 8), headalign::invalid_argument);
  CHECK_THROWS_AS(hc::DeviceGram<float>(4, -1), headalign::invalid_argument);
  CHECK_THROWS_AS(hc::DeviceGram<double>(1024, 128), headalign::invalid_argument);  // (H·d)² beyond int
}

TEST_CASE("HEADALIGN_CUDA_TRY throws cuda_error naming the call and the status", "[cuda][host]") {
  CHECK_NOTHROW(HEADALIGN_CUDA_TRY(cudaSuccess));
  try {
    HEADALIGN_CUDA_TRY(cudaErrorInvalidValue);
    FAIL("no exception");
  } catch (const hc::cuda_error& e) {
    CHECK(e.status() == static_cast<int>(cudaErrorInvalidValue));
    CHECK_THAT(e.what(), Catch::Contains("cudaErrorInvalidValue") && Catch::Contains("test_cuda_host.cpp"));
  }
  CHECK_THROWS_WITH(HEADALIGN_CUDA_TRY(CUBLAS_STATUS_NOT_INITIALIZED), Catch::Contains("CUBLAS_STATUS_NOT_INITIALIZED"));
  CHECK_THROWS_WITH(HEADALIGN_CUDA_TRY(CUSOLVER_STATUS_INVALID_VALUE), Catch::Contains("CUSOLVER_STATUS_INVALID_VALUE"));
  CHECK(hc::device_count() >= 0);
}
