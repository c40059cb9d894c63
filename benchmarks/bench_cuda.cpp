// GPU kernels against their baselines in the same run: batched Procrustes by each method against
// cuSOLVER's looped gesvdj (matrices/s, with accuracy counters), and device Gram accumulation
// (effective TFLOP/s of SYRK, TF32 GEMM and float16 GEMM). Every benchmark reports an error and
// is skipped when no CUDA device exists.
#include <headalign/cuda/backend.cuh>
#include <headalign/procrustes.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace {

using headalign::Index;
namespace hc = headalign::cuda;

bool have_device(benchmark::State& state) {
  if (hc::device_count() > 0) return true;
  state.SkipWithError("no CUDA device");
  return false;
}

template <class S>
std::vector<S> gaussian(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist;
  std::vector<S> v(n);
  for (auto& x : v) x = static_cast<S>(dist(rng));
  return v;
}

/// Times work() on the default stream with CUDA events (manual time, seconds).
template <class F>
double timed(F&& work) {
  cudaEvent_t start, stop;
  HEADALIGN_CUDA_TRY(cudaEventCreate(&start));
  HEADALIGN_CUDA_TRY(cudaEventCreate(&stop));
  HEADALIGN_CUDA_TRY(cudaEventRecord(start, nullptr));
  work();
  HEADALIGN_CUDA_TRY(cudaEventRecord(stop, nullptr));
  HEADALIGN_CUDA_TRY(cudaEventSynchronize(stop));
  float ms = 0;
  HEADALIGN_CUDA_TRY(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return static_cast<double>(ms) / 1e3;
}

/// BM_CudaPolar<S, method, tf32>/<d>/<batch>: Gaussian d × d matrices (the CPU benchmarks' input),
/// default options (verify on). Counters: matrices/s (items_per_second), iterations, the largest
/// ‖RᵀR − I‖_F, and the largest relative score error against the CPU library in double on the
/// first 32 matrices.
template <class S, hc::PolarMethod Method, bool Tf32 = false>
void BM_CudaPolar(benchmark::State& state) {
  if (!have_device(state)) return;
  const Index d = state.range(0), batch = state.range(1);
  const std::size_t n = static_cast<std::size_t>(d * d);
  const std::vector<S> host = gaussian<S>(n * static_cast<std::size_t>(batch), 1);
  hc::DeviceBuffer<S> m(host.size(), nullptr), r(host.size(), nullptr), scores(static_cast<std::size_t>(batch), nullptr);
  HEADALIGN_CUDA_TRY(cudaMemcpy(m.data(), host.data(), sizeof(S) * host.size(), cudaMemcpyHostToDevice));
  hc::Context ctx;
  hc::PolarOptions o;
  o.method = Method;
  o.tf32 = Tf32;
  hc::PolarReport report;
  report = hc::procrustes_batched<S>(ctx, m.data(), r.data(), scores.data(), d, batch, nullptr, o);  // warm-up
  for (auto _ : state)
    state.SetIterationTime(timed([&] { report = hc::procrustes_batched<S>(ctx, m.data(), r.data(), scores.data(), d, batch, nullptr, o); }));
  std::vector<S> got(static_cast<std::size_t>(batch));
  HEADALIGN_CUDA_TRY(cudaMemcpy(got.data(), scores.data(), sizeof(S) * got.size(), cudaMemcpyDeviceToHost));
  double worst = 0;
  const headalign::Alignment alignment =
      Method == hc::PolarMethod::Rope ? headalign::Alignment::Rope : headalign::Alignment::Orthogonal;
  for (Index b = 0; b < std::min<Index>(batch, 32); ++b) {
    const headalign::Matrix<double> mb =
        Eigen::Map<const headalign::Matrix<S>>(host.data() + static_cast<std::size_t>(b) * n, d, d).template cast<double>();
    const double exact = headalign::procrustes_score(mb, alignment);
    worst = std::max(worst, std::abs(static_cast<double>(got[static_cast<std::size_t>(b)]) - exact) / std::abs(exact));
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.counters["iterations"] = report.iterations;
  state.counters["orthogonality"] = report.max_orthogonality_error;
  state.counters["score_rel_err"] = worst;
  state.counters["not_converged"] = static_cast<double>(report.not_converged);
}

/// BM_CudaGram<S, T, tf32>/<tokens>/<H·d>: one DeviceGram::add of row-major tokens of type T.
/// Counter TFLOPS: the effective rate n·D·(D+1) / time (the SYRK's arithmetic; the TF32 and half
/// paths compute both triangles, twice that).
template <class S, class T, bool Tf32 = false>
void BM_CudaGram(benchmark::State& state) {
  if (!have_device(state)) return;
  const Index rows = state.range(0), dim = state.range(1);
  const std::vector<float> values = gaussian<float>(static_cast<std::size_t>(rows * dim), 2);
  std::vector<T> host(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    if constexpr (std::is_same<T, __half>::value) host[i] = __float2half(values[i]);
    else host[i] = static_cast<T>(values[i]);
  }
  hc::DeviceBuffer<T> x(host.size(), nullptr);
  HEADALIGN_CUDA_TRY(cudaMemcpy(x.data(), host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice));
  hc::Context ctx;
  hc::DeviceGram<S> g(dim / 128, 128);
  hc::GramOptions o;
  o.tf32 = Tf32;
  o.check = false;  // the pure accumulation rate; the check is one more read of the tokens
  g.add(ctx, x.data(), rows, dim, nullptr, o);  // warm-up
  for (auto _ : state) state.SetIterationTime(timed([&] { g.add(ctx, x.data(), rows, dim, nullptr, o); }));
  state.counters["TFLOPS"] = benchmark::Counter(static_cast<double>(rows) * static_cast<double>(dim) * static_cast<double>(dim + 1) * 1e-12 *
                                                    static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate);
}

/// The same add with GramOptions::check on (NaN/Inf and overflow scan, then a wait).
template <class S>
void BM_CudaGramChecked(benchmark::State& state) {
  if (!have_device(state)) return;
  const Index rows = state.range(0), dim = state.range(1);
  const std::vector<S> host = gaussian<S>(static_cast<std::size_t>(rows * dim), 2);
  hc::DeviceBuffer<S> x(host.size(), nullptr);
  HEADALIGN_CUDA_TRY(cudaMemcpy(x.data(), host.data(), sizeof(S) * host.size(), cudaMemcpyHostToDevice));
  hc::Context ctx;
  hc::DeviceGram<S> g(dim / 128, 128);
  g.add(ctx, x.data(), rows, dim, nullptr);
  for (auto _ : state) state.SetIterationTime(timed([&] { g.add(ctx, x.data(), rows, dim, nullptr); }));
  state.counters["TFLOPS"] = benchmark::Counter(static_cast<double>(rows) * static_cast<double>(dim) * static_cast<double>(dim + 1) * 1e-12 *
                                                    static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate);
}

// 15,872 = all head pairs of a 32-layer, 32-head model (32 · 496). The looped baseline's rate
// does not depend on the batch, so it runs on fewer matrices.
void polar_args(benchmark::internal::Benchmark* b) {
  b->Args({128, 15872})->Args({64, 15872})->Args({128, 256})->UseManualTime()->Unit(benchmark::kMillisecond);
}
void loop_args(benchmark::internal::Benchmark* b) {
  b->Args({128, 256})->Args({64, 256})->UseManualTime()->Unit(benchmark::kMillisecond);
}
void gram_args(benchmark::internal::Benchmark* b) {
  b->Args({16384, 4096})->Args({16384, 2048})->UseManualTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK_TEMPLATE(BM_CudaPolar, float, hc::PolarMethod::GesvdjLoop)->Apply(loop_args);
BENCHMARK_TEMPLATE(BM_CudaPolar, float, hc::PolarMethod::NewtonSchulz)->Apply(polar_args);
BENCHMARK_TEMPLATE(BM_CudaPolar, float, hc::PolarMethod::NewtonSchulz, true)->Apply(polar_args);
BENCHMARK_TEMPLATE(BM_CudaPolar, float, hc::PolarMethod::Rope)->Apply(polar_args);
BENCHMARK_TEMPLATE(BM_CudaPolar, float, hc::PolarMethod::GesvdjBatched)
    ->Args({32, 15872})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_CudaPolar, float, hc::PolarMethod::GesvdjLoop)->Args({32, 256})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_CudaPolar, double, hc::PolarMethod::GesvdjLoop)->Args({128, 256})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_CudaPolar, double, hc::PolarMethod::NewtonSchulz)->Args({128, 15872})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_CudaGram, float, float)->Apply(gram_args);
BENCHMARK_TEMPLATE(BM_CudaGram, float, float, true)->Apply(gram_args);
BENCHMARK_TEMPLATE(BM_CudaGram, float, __half)->Apply(gram_args);
BENCHMARK_TEMPLATE(BM_CudaGram, double, double)->Apply(gram_args);
BENCHMARK_TEMPLATE(BM_CudaGramChecked, float)->Args({16384, 4096})->UseManualTime()->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
