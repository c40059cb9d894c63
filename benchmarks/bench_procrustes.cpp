// Procrustes kernels against their baselines: every polar method vs LAPACK gesdd, the RoPE closed
// form, and Gram accumulation vs a plain CBLAS SYRK on the same data.
#include <headalign/headalign.hpp>

#include <benchmark/benchmark.h>

#include <random>

#ifdef HEADALIGN_USE_LAPACKE
#include <cblas.h>
#include <lapacke.h>
#endif

namespace {

using headalign::Index;

template <class S>
headalign::Matrix<S> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> n;
  headalign::Matrix<S> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<S>(n(rng));
  return m;
}

template <class S, headalign::PolarMethod M>
void BM_Procrustes(benchmark::State& state) {
  const Index d = state.range(0);
  const auto m = random_matrix<S>(d, d, 1);
  for (auto _ : state) benchmark::DoNotOptimize(headalign::procrustes(m, headalign::Alignment::Orthogonal, {}, {M}));
}

template <class S>
void BM_ProcrustesScore(benchmark::State& state) {
  const Index d = state.range(0);
  const auto m = random_matrix<S>(d, d, 1);
  for (auto _ : state) benchmark::DoNotOptimize(headalign::procrustes_score(m, headalign::Alignment::Orthogonal));
}

template <class S>
void BM_RopeProcrustes(benchmark::State& state) {
  const Index d = state.range(0);
  const auto m = random_matrix<S>(d, d, 1);
  for (auto _ : state) benchmark::DoNotOptimize(headalign::procrustes(m, headalign::Alignment::Rope));
}

#ifdef HEADALIGN_USE_LAPACKE
// Baseline: LAPACK gesdd (full U, Vᵀ) + one GEMM for U Vᵀ, as a user would call it directly.
template <class S>
void BM_LapackGesdd(benchmark::State& state) {
  const Index d = state.range(0);
  const auto m = random_matrix<S>(d, d, 1);
  headalign::Matrix<S> a(d, d), u(d, d), vt(d, d), r(d, d);
  headalign::Vector<S> s(d);
  for (auto _ : state) {
    a = m;
    if constexpr (std::is_same<S, float>::value) {
      LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'A', int(d), int(d), a.data(), int(d), s.data(), u.data(), int(d), vt.data(), int(d));
      cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, int(d), int(d), int(d), 1.f, u.data(), int(d), vt.data(), int(d), 0.f, r.data(), int(d));
    } else {
      LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'A', int(d), int(d), a.data(), int(d), s.data(), u.data(), int(d), vt.data(), int(d));
      cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, int(d), int(d), int(d), 1.0, u.data(), int(d), vt.data(), int(d), 0.0, r.data(), int(d));
    }
    benchmark::DoNotOptimize(r.data());
  }
}
BENCHMARK_TEMPLATE(BM_LapackGesdd, float)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_LapackGesdd, double)->Arg(64)->Arg(128);

// Baseline: one CBLAS SYRK over the same row-major tokens.
template <class S>
void BM_BlasSyrk(benchmark::State& state) {
  const Index n = state.range(0), dim = state.range(1);
  const auto x = random_matrix<S>(dim, n, 2);  // column-major dim × n = row-major n × dim
  headalign::Matrix<S> c = headalign::Matrix<S>::Zero(dim, dim);
  for (auto _ : state) {
    if constexpr (std::is_same<S, float>::value)
      cblas_ssyrk(CblasColMajor, CblasLower, CblasNoTrans, int(dim), int(n), 1.f, x.data(), int(dim), 1.f, c.data(), int(dim));
    else
      cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, int(dim), int(n), 1.0, x.data(), int(dim), 1.0, c.data(), int(dim));
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(double(n) * double(dim) * double(dim + 1), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK_TEMPLATE(BM_BlasSyrk, float)->Args({8192, 2048});
BENCHMARK_TEMPLATE(BM_BlasSyrk, double)->Args({8192, 2048});
#endif

template <class S>
void BM_GramAccumulate(benchmark::State& state) {
  const Index n = state.range(0), dim = state.range(1);
  const auto x = random_matrix<S>(dim, n, 2);
  using RowMajor = Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  headalign::HeadGram<S> g(dim / 128, 128);
  for (auto _ : state) {
    g.add(RowMajor(x.data(), n, dim));
    benchmark::DoNotOptimize(g.lower().data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(double(n) * double(dim) * double(dim + 1), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK_TEMPLATE(BM_GramAccumulate, float)->Args({8192, 2048});
BENCHMARK_TEMPLATE(BM_GramAccumulate, double)->Args({8192, 2048});

using headalign::PolarMethod;
BENCHMARK_TEMPLATE(BM_Procrustes, float, PolarMethod::Auto)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_Procrustes, float, PolarMethod::JacobiSvd)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_Procrustes, float, PolarMethod::Gesdd)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_Procrustes, float, PolarMethod::Newton)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_Procrustes, double, PolarMethod::Auto)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_Procrustes, double, PolarMethod::JacobiSvd)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_Procrustes, double, PolarMethod::Gesdd)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_Procrustes, double, PolarMethod::Newton)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_ProcrustesScore, float)->Arg(128);
BENCHMARK_TEMPLATE(BM_ProcrustesScore, double)->Arg(128);
BENCHMARK_TEMPLATE(BM_RopeProcrustes, float)->Arg(128);
BENCHMARK_TEMPLATE(BM_RopeProcrustes, double)->Arg(128);

}  // namespace

BENCHMARK_MAIN();
