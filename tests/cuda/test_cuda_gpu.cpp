// The CUDA backend on a GPU, against independent references: planted polar factors (M = U Σ Vᵀ
// with R = U Vᵀ known), the CPU library in double, and HeadGram on the host. Tag [gpu]; the CTest
// `cuda_gpu` runs them with HEADALIGN_CUDA_GPU_TESTS=1, and the program then exits 77 (skipped)
// before any test when no CUDA device exists.
#include <headalign/cuda/backend.cuh>
#include <headalign/gram.hpp>
#include <headalign/procrustes.hpp>

#include <catch2/catch.hpp>

#include "../test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

using namespace headalign;
namespace hc = headalign::cuda;

namespace {

const bool gpu_tests_can_run = [] {
  if (std::getenv("HEADALIGN_CUDA_GPU_TESTS") != nullptr && hc::device_count() == 0) {
    std::printf("no CUDA device: the GPU tests are skipped\n");
    std::exit(77);
  }
  return true;
}();

template <class T>
struct Device {
  hc::DeviceBuffer<T> buf;
  explicit Device(std::size_t n) : buf(n, nullptr) {}
  explicit Device(const std::vector<T>& host) : buf(host.size(), nullptr) {
    HEADALIGN_CUDA_TRY(cudaMemcpy(buf.data(), host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice));
  }
  std::vector<T> get() const {
    std::vector<T> host(buf.size());
    HEADALIGN_CUDA_TRY(cudaDeviceSynchronize());
    HEADALIGN_CUDA_TRY(cudaMemcpy(host.data(), buf.data(), sizeof(T) * host.size(), cudaMemcpyDeviceToHost));
    return host;
  }
  T* data() { return buf.data(); }
};

// A batch of planted matrices M_b = U_b diag(s) V_bᵀ (column-major), singular values from 1 down to
// 10^-decades, with their exact rotations U_b V_bᵀ and scores Σs.
template <class S>
struct Planted {
  std::vector<S> m;
  std::vector<Matrix<double>> rotation;
  std::vector<double> score;
};

template <class S>
Planted<S> planted(Index d, Index batch, double decades, std::mt19937_64& rng) {
  Planted<S> p;
  p.m.resize(static_cast<std::size_t>(d * d * batch));
  for (Index b = 0; b < batch; ++b) {
    const Matrix<double> u = test::random_orthogonal<double>(d, rng), v = test::random_orthogonal<double>(d, rng);
    Vector<double> s(d);
    for (Index i = 0; i < d; ++i) s(i) = std::pow(10.0, -decades * static_cast<double>(i) / static_cast<double>(std::max<Index>(d - 1, 1)));
    const Matrix<S> m = (u * s.asDiagonal() * v.transpose()).cast<S>();
    std::copy(m.data(), m.data() + d * d, p.m.begin() + b * d * d);
    p.rotation.push_back(u * v.transpose());
    p.score.push_back(s.sum());
  }
  return p;
}

template <class S>
Matrix<double> matrix_at(const std::vector<S>& all, Index d, Index b) {
  return Eigen::Map<const Matrix<S>>(all.data() + b * d * d, d, d).template cast<double>();
}

// @p batch Gaussian d × d matrices, one after the other.
template <class S>
std::vector<S> gaussian_batch(Index d, Index batch, std::mt19937_64& rng) {
  std::vector<S> all(static_cast<std::size_t>(d * d * batch));
  for (auto& v : all) v = static_cast<S>(std::normal_distribution<double>(0, 1)(rng));
  return all;
}

double orthogonality(const Matrix<double>& r) {
  return (r.transpose() * r - Matrix<double>::Identity(r.rows(), r.cols())).norm();
}

}  // namespace

TEMPLATE_TEST_CASE("GPU Procrustes recovers planted polar factors with every method", "[cuda][gpu]", float, double) {
  using S = TestType;
  const bool single = std::is_same<S, float>::value;
  std::mt19937_64 rng(1);
  hc::Context ctx;
  for (Index d : {8, 32, 64, 128}) {
    const Index batch = 37;
    const Planted<S> p = planted<S>(d, batch, 2.0, rng);
    Device<S> m(p.m), r(static_cast<std::size_t>(d * d * batch)), scores(static_cast<std::size_t>(batch));
    for (hc::PolarMethod method : {hc::PolarMethod::GesvdjLoop, hc::PolarMethod::GesvdjBatched, hc::PolarMethod::NewtonSchulz}) {
      if (method == hc::PolarMethod::GesvdjBatched && d > 32) continue;
      hc::PolarOptions o;
      o.method = method;
      const hc::PolarReport rep = hc::procrustes_batched<S>(ctx, m.data(), r.data(), scores.data(), d, batch, nullptr, o);
      const std::vector<S> rr = r.get(), ss = scores.get();
      double worst_orth = 0;
      for (Index b = 0; b < batch; ++b) {
        const Matrix<double> rb = matrix_at(rr, d, b);
        worst_orth = std::max(worst_orth, orthogonality(rb));
        CHECK((rb - p.rotation[static_cast<std::size_t>(b)]).norm() <= (single ? 2e-4 : 1e-10) * static_cast<double>(d));
        CHECK(std::abs(ss[static_cast<std::size_t>(b)] - p.score[static_cast<std::size_t>(b)]) <=
              (single ? 1e-5 : 1e-12) * p.score[static_cast<std::size_t>(b)]);
      }
      INFO("d = " << d << ", method " << static_cast<int>(method) << ", iterations " << rep.iterations);
      CHECK(worst_orth <= (single ? 1e-5 : 1e-12));
      CHECK(rep.checked);
      CHECK(rep.converged);
      CHECK(rep.not_converged == 0);
      // Measured on the device in S arithmetic: equal up to that round-off.
      CHECK(std::abs(rep.max_orthogonality_error - worst_orth) <= (single ? 5e-6 : 1e-13));
    }
  }
}

TEMPLATE_TEST_CASE("GPU Procrustes of random matrices matches the CPU library in double", "[cuda][gpu]", float, double) {
  using S = TestType;
  const bool single = std::is_same<S, float>::value;
  std::mt19937_64 rng(2);
  hc::Context ctx;
  const Index d = 128, batch = 16;
  const std::vector<S> host = gaussian_batch<S>(d, batch, rng);
  Device<S> m(host), r(host.size()), scores(static_cast<std::size_t>(batch));
  for (hc::PolarMethod method : {hc::PolarMethod::GesvdjLoop, hc::PolarMethod::NewtonSchulz}) {
    hc::PolarOptions o;
    o.method = method;
    const hc::PolarReport rep = hc::procrustes_batched<S>(ctx, m.data(), r.data(), scores.data(), d, batch, nullptr, o);
    CHECK(rep.converged);
    const std::vector<S> rr = r.get(), ss = scores.get();
    for (Index b = 0; b < batch; ++b) {
      const auto cpu = procrustes(matrix_at(host, d, b));
      CHECK(std::abs(ss[static_cast<std::size_t>(b)] - cpu.score) <= (single ? 2e-5 : 1e-12) * cpu.score);
      CHECK(orthogonality(matrix_at(rr, d, b)) <= (single ? 1e-5 : 1e-12));
      // Optimality: the GPU rotation scores what the CPU's optimum scores.
      CHECK((matrix_at(rr, d, b).transpose() * matrix_at(host, d, b)).trace() >= cpu.score * (1 - (single ? 2e-5 : 1e-12)));
    }
  }
}

TEMPLATE_TEST_CASE("pointer arrays, score-only calls and zero matrices", "[cuda][gpu]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(3);
  hc::Context ctx;
  const Index d = 64, batch = 9;
  Planted<S> p = planted<S>(d, batch, 1.0, rng);
  std::fill(p.m.begin() + 4 * d * d, p.m.begin() + 5 * d * d, S(0));  // matrix 4 is zero
  Device<S> m(p.m), r1(p.m.size()), r2(p.m.size()), s1(static_cast<std::size_t>(batch)), s2(static_cast<std::size_t>(batch));
  std::vector<const S*> in(static_cast<std::size_t>(batch));
  std::vector<S*> out(static_cast<std::size_t>(batch));
  for (Index b = 0; b < batch; ++b) {
    in[static_cast<std::size_t>(b)] = m.data() + (batch - 1 - b) * d * d;  // reversed order
    out[static_cast<std::size_t>(b)] = r2.data() + (batch - 1 - b) * d * d;
  }
  Device<const S*> in_d(in);
  Device<S*> out_d(out);
  for (hc::PolarMethod method : {hc::PolarMethod::NewtonSchulz, hc::PolarMethod::GesvdjLoop}) {
    hc::PolarOptions o;
    o.method = method;
    hc::procrustes_batched<S>(ctx, m.data(), r1.data(), s1.data(), d, batch, nullptr, o);
    hc::procrustes_batched<S>(ctx, in_d.data(), out_d.data(), s2.data(), d, batch, nullptr, o);
    const std::vector<S> a = r1.get(), b = r2.get(), sa = s1.get(), sb = s2.get();
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(std::abs(a[i] - b[i]) <= S(1e-6));
    for (Index k = 0; k < batch; ++k)
      CHECK(std::abs(sa[static_cast<std::size_t>(k)] - sb[static_cast<std::size_t>(batch - 1 - k)]) <= S(1e-5) * (1 + std::abs(sa[static_cast<std::size_t>(k)])));
    // Scores alone equal the scores with rotations.
    Device<S> s3(static_cast<std::size_t>(batch));
    hc::procrustes_batched<S>(ctx, m.data(), static_cast<S*>(nullptr), s3.data(), d, batch, nullptr, o);
    const std::vector<S> sc = s3.get();
    for (Index k = 0; k < batch; ++k) CHECK(std::abs(sc[static_cast<std::size_t>(k)] - sa[static_cast<std::size_t>(k)]) <= S(1e-5) * (1 + std::abs(sa[static_cast<std::size_t>(k)])));
    // The zero matrix: an orthogonal R (the identity for Newton–Schulz), score 0.
    CHECK(sa[4] == S(0));
    CHECK(orthogonality(matrix_at(a, d, 4)) <= 1e-5);
  }
}

TEMPLATE_TEST_CASE("NaN input throws before any output is written", "[cuda][gpu]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(4);
  hc::Context ctx;
  const Index d = 32, batch = 5;
  Planted<S> p = planted<S>(d, batch, 1.0, rng);
  p.m[static_cast<std::size_t>(3 * d * d + 17)] = std::numeric_limits<S>::quiet_NaN();
  Device<S> m(p.m), r(std::vector<S>(p.m.size(), S(7))), s(std::vector<S>(static_cast<std::size_t>(batch), S(7)));
  for (hc::PolarMethod method : {hc::PolarMethod::NewtonSchulz, hc::PolarMethod::GesvdjLoop, hc::PolarMethod::GesvdjBatched,
                                 hc::PolarMethod::Rope}) {
    hc::PolarOptions o;
    o.method = method;
    CHECK_THROWS_WITH(hc::procrustes_batched<S>(ctx, m.data(), r.data(), s.data(), d, batch, nullptr, o),
                      Catch::Contains("matrix 3"));
    for (S v : r.get()) CHECK(v == S(7));
    for (S v : s.get()) CHECK(v == S(7));
  }
}

TEST_CASE("rank-deficient matrices fall back to gesvdj and stay orthogonal", "[cuda][gpu]") {
  std::mt19937_64 rng(6);
  hc::Context ctx;
  const Index d = 64, batch = 3;
  std::vector<double> host;
  std::vector<double> nuclear;
  for (Index b = 0; b < batch; ++b) {
    const Matrix<double> a = test::gaussian<double>(d, d / 2, rng), c = test::gaussian<double>(d / 2, d, rng);
    const Matrix<double> m = a * c;  // rank d/2: no polar factor is unique, NS leaves half the σ at 0
    host.insert(host.end(), m.data(), m.data() + d * d);
    nuclear.push_back(procrustes_score(m, Alignment::Orthogonal));
  }
  Device<double> m(host), r(host.size()), s(static_cast<std::size_t>(batch));
  hc::PolarOptions o;
  o.max_iterations = 30;
  const hc::PolarReport rep = hc::procrustes_batched<double>(ctx, m.data(), r.data(), s.data(), d, batch, nullptr, o);
  CHECK(rep.not_converged == batch);
  CHECK(rep.recomputed == batch);
  CHECK(rep.converged);
  const std::vector<double> rr = r.get(), ss = s.get();
  for (Index b = 0; b < batch; ++b) {
    CHECK(orthogonality(matrix_at(rr, d, b)) <= 1e-10);
    CHECK(std::abs(ss[static_cast<std::size_t>(b)] - nuclear[static_cast<std::size_t>(b)]) <= 1e-10 * nuclear[static_cast<std::size_t>(b)]);
  }
  o.fallback = false;
  const hc::PolarReport no = hc::procrustes_batched<double>(ctx, m.data(), r.data(), s.data(), d, batch, nullptr, o);
  CHECK_FALSE(no.converged);
  CHECK(no.recomputed == 0);
}

TEST_CASE("TF32 Newton–Schulz: orthogonal to FP32 round-off, scores to TF32 precision", "[cuda][gpu]") {
  std::mt19937_64 rng(7);
  hc::Context ctx;
  const Index d = 128, batch = 64;
  const Planted<float> p = planted<float>(d, batch, 2.0, rng);
  Device<float> m(p.m), r(p.m.size()), s(static_cast<std::size_t>(batch));
  hc::PolarOptions o;
  o.tf32 = true;
  const hc::PolarReport rep = hc::procrustes_batched<float>(ctx, m.data(), r.data(), s.data(), d, batch, nullptr, o);
  CHECK(rep.converged);
  const std::vector<float> rr = r.get(), ss = s.get();
  double worst_score = 0, worst_r = 0;
  for (Index b = 0; b < batch; ++b) {
    CHECK(orthogonality(matrix_at(rr, d, b)) <= 1e-5);
    worst_score = std::max(worst_score, std::abs(ss[static_cast<std::size_t>(b)] - p.score[static_cast<std::size_t>(b)]) / p.score[static_cast<std::size_t>(b)]);
    worst_r = std::max(worst_r, (matrix_at(rr, d, b) - p.rotation[static_cast<std::size_t>(b)]).norm());
  }
  std::printf("TF32 Newton–Schulz, d = 128: max ‖RᵀR − I‖_F %.2e, max ‖R − UVᵀ‖_F %.2e, max relative score error %.2e\n",
              rep.max_orthogonality_error, worst_r, worst_score);
  CHECK(worst_score <= 1e-3);
}

TEMPLATE_TEST_CASE("GPU RoPE Procrustes equals the CPU closed form, partial rotary included", "[cuda][gpu]", float, double) {
  using S = TestType;
  const bool single = std::is_same<S, float>::value;
  std::mt19937_64 rng(8);
  hc::Context ctx;
  const Index d = 128, batch = 11;
  const std::vector<S> host = gaussian_batch<S>(d, batch, rng);
  Device<S> m(host), r(host.size()), s(static_cast<std::size_t>(batch));
  for (RopeSpec spec : {RopeSpec{RopeSpec::Pairing::HalfSplit, 0}, RopeSpec{RopeSpec::Pairing::Interleaved, 0},
                        RopeSpec{RopeSpec::Pairing::HalfSplit, 96}, RopeSpec{RopeSpec::Pairing::Interleaved, 120}}) {
    hc::PolarOptions o;
    o.method = hc::PolarMethod::Rope;
    o.rope = spec;
    const hc::PolarReport rep = hc::procrustes_batched<S>(ctx, m.data(), r.data(), s.data(), d, batch, nullptr, o);
    CHECK(rep.converged);
    const std::vector<S> rr = r.get(), ss = s.get();
    for (Index b = 0; b < batch; ++b) {
      const auto cpu = procrustes(matrix_at(host, d, b), Alignment::Rope, spec);
      INFO("rotary_dims " << spec.rotary_dims << ", interleaved " << (spec.pairing == RopeSpec::Pairing::Interleaved));
      CHECK((matrix_at(rr, d, b) - cpu.rotation).norm() <= (single ? 1e-3 : 1e-9));
      CHECK(std::abs(ss[static_cast<std::size_t>(b)] - cpu.score) <= (single ? 2e-5 : 1e-12) * std::abs(cpu.score));
    }
  }
}

TEMPLATE_TEST_CASE("DeviceGram equals HeadGram on the host", "[cuda][gpu]", float, double) {
  using S = TestType;
  const bool single = std::is_same<S, float>::value;
  std::mt19937_64 rng(9);
  hc::Context ctx;
  const Index heads = 4, d = 32, dim = heads * d, n = 1000, stride = dim + 3;
  std::vector<S> tokens(static_cast<std::size_t>(n * stride));
  for (auto& v : tokens) v = static_cast<S>(std::normal_distribution<double>(0, 1)(rng));
  Device<S> x(tokens);
  for (bool normalize : {false, true}) {
    hc::DeviceGram<S> g(heads, d, normalize), first(heads, d, normalize), second(heads, d, normalize);
    g.add(ctx, x.data(), n, stride, nullptr);
    first.add(ctx, x.data(), 400, stride, nullptr);
    second.add(ctx, x.data() + 400 * stride, n - 400, stride, nullptr);
    first.merge(ctx, second, nullptr);
    HeadGram<S> host(heads, d, normalize);
    host.add(tokens.data(), n, stride);
    for (const hc::DeviceGram<S>* dg : {&g, &first}) {
      CHECK(dg->tokens() == n);
      std::vector<S> lower(static_cast<std::size_t>(dim * dim));
      dg->copy_to_host(lower.data(), nullptr);
      const HeadGram<S> back = HeadGram<S>::from_gram(Eigen::Map<const Matrix<S>>(lower.data(), dim, dim), heads, d, dg->tokens(), normalize);
      const double scale = host.gram().template cast<double>().cwiseAbs().maxCoeff();
      CHECK((back.gram().template cast<double>() - host.gram().template cast<double>()).cwiseAbs().maxCoeff() <=
            (single ? 1e-5 : 1e-13) * scale);
    }
  }
  // NaN tokens throw and add nothing.
  hc::DeviceGram<S> g(heads, d);
  g.add(ctx, x.data(), 10, stride, nullptr);
  std::vector<S> before(static_cast<std::size_t>(dim * dim)), after(before.size());
  g.copy_to_host(before.data(), nullptr);
  std::vector<S> bad(tokens.begin(), tokens.begin() + 20 * stride);
  bad[static_cast<std::size_t>(5 * stride + 7)] = std::numeric_limits<S>::infinity();
  Device<S> xb(bad);
  CHECK_THROWS_WITH(g.add(ctx, xb.data(), 20, stride, nullptr), Catch::Contains("NaN or Inf"));
  g.copy_to_host(after.data(), nullptr);
  CHECK(before == after);
  CHECK(g.tokens() == 10);
  CHECK_THROWS_AS(g.add(ctx, x.data(), 10, dim - 1, nullptr), headalign::invalid_argument);
}

TEST_CASE("DeviceGram takes float16 and bfloat16 tokens, and TF32", "[cuda][gpu]") {
  std::mt19937_64 rng(10);
  hc::Context ctx;
  const Index heads = 2, d = 64, dim = heads * d, n = 512;
  std::vector<float> values(static_cast<std::size_t>(n * dim));
  for (auto& v : values) v = static_cast<float>(std::normal_distribution<double>(0, 1)(rng));
  std::vector<__half> h(values.size());
  std::vector<__nv_bfloat16> bf(values.size());
  std::vector<float> hv(values.size()), bv(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    h[i] = __float2half(values[i]);
    hv[i] = __half2float(h[i]);
    bf[i] = __float2bfloat16(values[i]);
    bv[i] = __bfloat162float(bf[i]);
  }
  auto compare = [&](const hc::DeviceGram<float>& g, const std::vector<float>& reference, double tol) {
    HeadGram<double> host(heads, d);
    host.add(reference.data(), n, dim);
    std::vector<float> lower(static_cast<std::size_t>(dim * dim));
    g.copy_to_host(lower.data(), nullptr);
    const HeadGram<float> back = HeadGram<float>::from_gram(Eigen::Map<const Matrix<float>>(lower.data(), dim, dim), heads, d, n);
    const double scale = host.gram().cwiseAbs().maxCoeff();
    return (back.gram().cast<double>() - host.gram()).cwiseAbs().maxCoeff() <= tol * scale;
  };
  Device<__half> xh(h);
  Device<__nv_bfloat16> xbf(bf);
  Device<float> xf(values);
  hc::DeviceGram<float> gh(heads, d), gbf(heads, d), gt(heads, d), gd(heads, d);
  gh.add(ctx, xh.data(), n, dim, nullptr);
  gbf.add(ctx, xbf.data(), n, dim, nullptr);
  hc::GramOptions tf32;
  tf32.tf32 = true;
  gt.add(ctx, xf.data(), n, dim, nullptr, tf32);
  CHECK(compare(gh, hv, 1e-5));   // products of halves are exact in FP32
  CHECK(compare(gbf, bv, 1e-5));
  CHECK(compare(gt, values, 5e-3));
  // double tokens into a float Gram (converted), float tokens into a double one.
  std::vector<double> dv(values.begin(), values.end());
  Device<double> xd(dv);
  gd.add(ctx, xd.data(), n, dim, nullptr);
  CHECK(compare(gd, values, 1e-5));
  hc::DeviceGram<double> g64(heads, d);
  g64.add(ctx, xf.data(), n, dim, nullptr);
  std::vector<double> lower(static_cast<std::size_t>(dim * dim));
  g64.copy_to_host(lower.data(), nullptr);
  HeadGram<double> host(heads, d);
  host.add(values.data(), n, dim);
  const HeadGram<double> back = HeadGram<double>::from_gram(Eigen::Map<const Matrix<double>>(lower.data(), dim, dim), heads, d, n);
  CHECK((back.gram() - host.gram()).cwiseAbs().maxCoeff() <= 1e-12 * host.gram().cwiseAbs().maxCoeff());
}
