// Benchmarks of the stages after accumulation: similarities, grouping, GPA, and one whole layer
// (keys and values) against the plain mean-pool conversion of the same layer.
#include <headalign/headalign.hpp>

#include <benchmark/benchmark.h>

#include <Eigen/QR>

#include <map>
#include <memory>
#include <random>
#include <tuple>

using namespace headalign;

namespace {

Matrix<double> gaussian(Index r, Index c, std::mt19937_64& rng) {
  std::normal_distribution<double> n(0, 1);
  Matrix<double> m(r, c);
  for (Index j = 0; j < c; ++j)
    for (Index i = 0; i < r; ++i) m(i, j) = n(rng);
  return m;
}

Matrix<double> orthogonal(Index d, std::mt19937_64& rng) {
  Eigen::HouseholderQR<Matrix<double>> qr(gaussian(d, d, rng));
  return qr.householderQ();
}

// Row-normalised Grams of n tokens of H heads × d dims: with `groups` > 0 the heads are rotated
// noisy copies of that many sources (RoPE-block rotations when rope), otherwise independent noise.
const HeadGram<double>& gram(Index h, Index d, Index groups, bool rope, Index n = 4096) {
  static std::map<std::tuple<Index, Index, Index, bool>, std::unique_ptr<HeadGram<double>>> cache;
  auto& slot = cache[{h, d, groups, rope}];
  if (!slot) {
    std::mt19937_64 rng(1234 + static_cast<unsigned>(h * 7 + d + groups + rope));
    std::vector<Matrix<double>> src;
    for (Index c = 0; c < groups; ++c) src.push_back(gaussian(n, d, rng));
    Matrix<double> x(n, h * d);
    for (Index i = 0; i < h; ++i) {
      if (groups == 0) {
        x.middleCols(i * d, d) = gaussian(n, d, rng);
        continue;
      }
      const Matrix<double> q = rope ? procrustes(gaussian(d, d, rng), Alignment::Rope).rotation : orthogonal(d, rng);
      x.middleCols(i * d, d) = src[static_cast<std::size_t>((i * 5 + 3) % groups)] * q + 0.3 * gaussian(n, d, rng);
    }
    slot = std::make_unique<HeadGram<double>>(h, d, true);
    slot->add(x);
  }
  return *slot;
}

template <Alignment A>
void BM_SimilarityMatrix(benchmark::State& state) {
  const Index h = state.range(0), d = state.range(1);
  const auto& g = gram(h, d, h / 4, A == Alignment::Rope);
  for (auto _ : state) benchmark::DoNotOptimize(similarity_matrix(g, A, Metric::Cosine).data());
  state.counters["pairs"] = static_cast<double>(h * (h - 1) / 2);
}

// Baseline of BM_SimilarityMatrix<Orthogonal>: the same scores one pair at a time through
// procrustes_score() (?gesdd('N') per pair with LAPACKE), as similarity_matrix() computed them
// before it reduced several pairs together (detail/simd_bidiagonal.hpp).
void BM_SimilarityMatrixOnePair(benchmark::State& state) {
  const Index h = state.range(0), d = state.range(1);
  const auto& g = gram(h, d, h / 4, false);
  Matrix<double> sim(h, h);
  for (auto _ : state) {
    sim.setZero();
    for (Index i = 0; i < h; ++i)
      for (Index j = i + 1; j < h; ++j)
        sim(i, j) = sim(j, i) = procrustes_score(g.block(i, j), Alignment::Orthogonal) / static_cast<double>(g.tokens());
    benchmark::DoNotOptimize(sim.data());
  }
  state.counters["pairs"] = static_cast<double>(h * (h - 1) / 2);
}

void BM_GroupHeads(benchmark::State& state) {
  const auto method = static_cast<GroupingOptions::Method>(state.range(0));
  const Index h = state.range(1), groups = state.range(2);
  std::mt19937_64 rng(5);
  Matrix<double> sim = gaussian(h, h, rng);
  sim = (sim + sim.transpose()).eval();
  sim.diagonal().setZero();
  GroupingOptions o;
  o.method = method;
  double score = 0;
  for (auto _ : state) score = group_heads(sim, groups, o).score;
  state.counters["score"] = score;
}

template <GpaUpdate U>
void gpa_bench(benchmark::State& state, bool structured) {
  const Index k = state.range(0), d = state.range(1);
  const auto& g = gram(k, d, structured ? 1 : 0, false);
  std::vector<Index> heads(static_cast<std::size_t>(k));
  for (Index i = 0; i < k; ++i) heads[static_cast<std::size_t>(i)] = i;
  GpaOptions o;
  o.update = U;
  GpaResult<double> r;
  for (auto _ : state) r = align_group(g, heads, Alignment::Orthogonal, {}, o);
  state.counters["iterations"] = r.iterations;
  state.counters["objective"] = r.objective;
}

// Planted: the k heads are rotated noisy copies of one source. Structureless: independent noise.
template <GpaUpdate U>
void BM_GpaGroup(benchmark::State& state) { gpa_bench<U>(state, true); }
template <GpaUpdate U>
void BM_GpaGroupStructureless(benchmark::State& state) { gpa_bench<U>(state, false); }

// Everything after accumulation for one layer in Gram space: similarities, grouping, GPA of keys
// and values, predicted errors (plan_layer). structured: heads are rotated copies of H/4 sources.
void convert_layer_bench(benchmark::State& state, bool structured, bool plain, GpaUpdate update) {
  const Index h = state.range(0), d = state.range(1);
  const Index groups = structured ? h / 4 : 0;
  const auto& gk = gram(h, d, groups, true);
  const auto& gv = gram(h, d, groups, false);
  PlanOptions o;
  o.num_groups = h / 4;
  o.gpa.update = update;
  if (plain) {
    o.group_by = GroupBy::None;
    o.key_alignment = o.value_alignment = Alignment::None;
  }
  int iterations = 0;
  for (auto _ : state) {
    const LayerPlan<double> plan = plan_layer(gk, gv, o);
    benchmark::DoNotOptimize(plan.order.data());
    iterations = 0;
    for (const auto& r : plan.key_gpa) iterations += r.iterations;
    for (const auto& r : plan.value_gpa) iterations += r.iterations;
  }
  state.counters["gpa_iterations"] = iterations;
}

// Folding a plan into the weights and merging (apply_alignment + merge_to_gqa), hidden = H·d,
// with the rotations of an aligned plan (mode 0) or the identities of mean-pool (mode 1); mode 2
// is mode 0 with query- and output-aware merging (MergeWeighting::Full, query moments from W_q).
template <class S>
void BM_FoldWeights(benchmark::State& state) {
  const Index h = state.range(0), d = state.range(1);
  const bool plain = state.range(2) == 1;
  MergeOptions merge;
  if (state.range(2) == 2) merge.weighting = MergeWeighting::Full;
  std::mt19937_64 rng(9);
  AttentionWeights<S> w;
  w.num_heads = w.num_kv_heads = h;
  w.head_dim = d;
  w.q = gaussian(h * d, h * d, rng).cast<S>();
  w.k = gaussian(h * d, h * d, rng).cast<S>();
  w.v = gaussian(h * d, h * d, rng).cast<S>();
  w.o = gaussian(h * d, h * d, rng).cast<S>();
  LayerPlan<S> plan;
  plan.grouping = group_contiguous(h, h / 4);
  for (Index p = 0; p < h; ++p) {
    plan.order.push_back(p);
    plan.key_rotations.push_back(plain ? Matrix<S>(Matrix<S>::Identity(d, d)) : Matrix<S>(procrustes(gaussian(d, d, rng), Alignment::Rope).rotation.cast<S>()));
    plan.value_rotations.push_back(plain ? Matrix<S>(Matrix<S>::Identity(d, d)) : Matrix<S>(orthogonal(d, rng).cast<S>()));
  }
  const HeadMoments<S> queries = HeadMoments<S>::from_weights(w.q, h, d);
  for (auto _ : state) benchmark::DoNotOptimize(convert_layer(w, plan, merge, &queries).k.data());
}

// Defaults (sequential GPA), and the reference's GPA update for comparison.
void BM_ConvertLayer(benchmark::State& state) { convert_layer_bench(state, true, false, GpaUpdate::Sequential); }
void BM_ConvertLayerReferenceGpa(benchmark::State& state) { convert_layer_bench(state, true, false, GpaUpdate::Reference); }
void BM_ConvertLayerStructureless(benchmark::State& state) { convert_layer_bench(state, false, false, GpaUpdate::Sequential); }
void BM_ConvertLayerStructurelessReferenceGpa(benchmark::State& state) {
  convert_layer_bench(state, false, false, GpaUpdate::Reference);
}
void BM_ConvertLayerMeanPool(benchmark::State& state) { convert_layer_bench(state, true, true, GpaUpdate::Reference); }

}  // namespace

BENCHMARK_TEMPLATE(BM_SimilarityMatrix, Alignment::Orthogonal)->Args({32, 128})->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_SimilarityMatrix, Alignment::Rope)->Args({32, 128})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SimilarityMatrixOnePair)->Args({32, 128})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GroupHeads)->Args({0, 32, 8})->Args({1, 32, 8})->Args({0, 16, 4})->Args({1, 16, 4})->Args({2, 16, 4})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_GpaGroup, GpaUpdate::Reference)->Args({4, 128})->Args({8, 128})->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_GpaGroup, GpaUpdate::Sequential)->Args({4, 128})->Args({8, 128})->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_GpaGroupStructureless, GpaUpdate::Reference)->Args({4, 128})->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_GpaGroupStructureless, GpaUpdate::Sequential)->Args({4, 128})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ConvertLayerMeanPool)->Args({16, 128})->Args({32, 128})->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_FoldWeights, float)->Args({32, 128, 0})->Args({32, 128, 1})->Args({32, 128, 2})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_TEMPLATE(BM_FoldWeights, double)->Args({32, 128, 0})->Args({32, 128, 1})->Args({32, 128, 2})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_ConvertLayer)->Args({16, 128})->Args({32, 128})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_ConvertLayerReferenceGpa)->Args({16, 128})->Args({32, 128})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_ConvertLayerStructureless)->Args({32, 128})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_ConvertLayerStructurelessReferenceGpa)->Args({32, 128})->Unit(benchmark::kMillisecond)->Iterations(1);
