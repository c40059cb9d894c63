// engine_integration: what an inference engine does to convert one attention layer.
//
//   engine_integration [--heads 16] [--head-dim 32] [--kv-heads 4] [--batches 40] [--seq 64]
//
// 1. During its normal forward loop the engine hands every batch's key, value and query
//    projection outputs (pre-RoPE, row-major, straight from its buffers) to headalign: HeadGram
//    accumulates keys and values, HeadMoments the queries. Nothing else is stored.
// 2. After calibration: plan_layer() (similarity → grouping → GPA), assess_merge() (predicted
//    logit and output errors), convert_layer() (fold the rotations, merge the heads).
// 3. The converted GQA layer runs in the same forward function (repeat_kv), here on held-out
//    sequences, against plain mean-pooling of adjacent heads.
#include "toy_attention.hpp"

#include <headalign/headalign.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

using namespace headalign;

namespace {

// Relative output error of a converted layer against the original on held-out sequences.
double output_error(const toy::Weights& original, const toy::Weights& converted, const std::vector<toy::Mat>& held_out) {
  double err = 0, ref = 0;
  for (const auto& x : held_out) {
    const toy::Mat a = toy::forward(original, x), b = toy::forward(converted, x);
    err += (a - b).squaredNorm();
    ref += a.squaredNorm();
  }
  return std::sqrt(err / ref);
}

}  // namespace

int main(int argc, char** argv) {
  Index heads = 16, d = 32, kv = 4, batches = 40, seq = 64;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    Index* target = a == "--heads" ? &heads : a == "--head-dim" ? &d : a == "--kv-heads" ? &kv : a == "--batches" ? &batches
                                            : a == "--seq"      ? &seq
                                                                : nullptr;
    if (!target || i + 1 >= argc) {
      std::fprintf(stderr, "usage: engine_integration [--heads H] [--head-dim D] [--kv-heads G] [--batches B] [--seq N]\n");
      return 2;
    }
    *target = std::atol(argv[++i]);
  }
  try {
    HEADALIGN_CHECK(heads > 0 && d > 0 && d % 2 == 0 && batches > 0 && seq > 1, "sizes must be positive, head_dim even");
    std::mt19937_64 rng(2024);
    const Index hidden = 4 * d;
    const toy::Weights layer = toy::redundant_layer(heads, d, hidden, kv, 0.35, rng);
    const toy::Mat mixing = toy::gaussian(hidden, hidden, rng, 1.0 / std::sqrt(static_cast<double>(hidden))) +
                            toy::Mat::Identity(hidden, hidden);

    // 1. Calibration inside the engine's forward loop.
    HeadGram<double> keys(heads, d, /*normalize_rows=*/true), values(heads, d, true);
    HeadMoments<double> queries(heads, d);
    const toy::ProjectionHook hook = [&](const toy::RowMat& q, const toy::RowMat& k, const toy::RowMat& v) {
      keys.add(k.data(), k.rows(), k.cols());  // raw row-major buffers: pointer, rows, row stride
      values.add(v.data(), v.rows(), v.cols());
      queries.add(q.data(), q.rows(), q.cols());
    };
    for (Index b = 0; b < batches; ++b) toy::forward(layer, toy::hidden_states(seq, hidden, mixing, rng), hook);
    std::printf("calibrated on %lld tokens: %lld heads × %lld dims → %lld KV heads\n", static_cast<long long>(keys.tokens()),
                static_cast<long long>(heads), static_cast<long long>(d), static_cast<long long>(kv));

    // 2. Plan, predict, convert.
    PlanOptions opt;
    opt.num_groups = kv;  // defaults: group by value similarity, cos, RoPE keys, orthogonal values
    const LayerPlan<double> plan = plan_layer(keys, values, opt);
    MergeOptions full;
    full.weighting = MergeWeighting::Full;
    const ConvertedLayer<double> converted = convert_and_assess(keys, values, layer, plan, full, &queries);
    const MergeAssessment<double>& predicted = converted.assessment;
    const toy::Weights aligned_mean = convert_layer(layer, plan);
    const toy::Weights& aligned_full = converted.merged;
    PlanOptions plain = opt;
    plain.group_by = GroupBy::None;
    plain.key_alignment = plain.value_alignment = Alignment::None;
    const toy::Weights mean_pool = convert_layer(layer, plan_layer(keys, values, plain));

    std::printf("groups:");
    for (const auto& g : plan.grouping.groups) {
      std::printf(" {");
      for (std::size_t t = 0; t < g.size(); ++t) std::printf("%s%lld", t ? " " : "", static_cast<long long>(g[t]));
      std::printf("}");
    }
    std::printf("  (GPA converged: %s)\n", plan.converged() ? "yes" : "no");
    std::printf("predicted key error %.1f %%, value error %.1f %% of the heads' energy (aligned, mean merge)\n",
                100 * plan.key_error.relative(), 100 * plan.value_error.relative());
    std::printf("predicted logit error %.1f %% → %.1f %%, output error %.1f %% → %.1f %% (mean merge → full merge)\n",
                100 * predicted.key_logit_mean.relative(), 100 * predicted.key_logit.relative(),
                100 * predicted.value_output_mean.relative(), 100 * predicted.value_output.relative());

    // 3. The converted layers in the engine's forward pass, on held-out sequences.
    std::vector<toy::Mat> held_out;
    for (int i = 0; i < 8; ++i) held_out.push_back(toy::hidden_states(seq, hidden, mixing, rng));
    const double e_plain = output_error(layer, mean_pool, held_out), e_mean = output_error(layer, aligned_mean, held_out),
                 e_full = output_error(layer, aligned_full, held_out);
    std::printf("held-out attention output error: mean-pool %.4f, aligned %.4f, aligned + full merge %.4f\n", e_plain, e_mean,
                e_full);
    std::printf("KV cache: %lld → %lld heads (%.0f× smaller)\n", static_cast<long long>(heads), static_cast<long long>(kv),
                static_cast<double>(heads) / static_cast<double>(kv));
    return e_full < e_plain ? 0 : 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "engine_integration: error: %s\n", e.what());
    return 1;
  }
}
