// l0_gates: a toy training loop that anneals hard-concrete gates from the aligned MHA layer to
// the merged GQA layer (the fine-tuning stage of arXiv 2412.20677, Sec. 3.5).
//
//   l0_gates [--steps 400] [--seed 7]
//
// Every original KV head h gets a gate z_h ∈ [0, 1] (shared by its key and value) and computes
// z_h K_h + (1 − z_h) K_group(h) (gated_weights()). The gates' logits log α are trained by SGD on
//   loss = E‖f_z(x) − f_MHA(x)‖² / E‖f_MHA(x)‖²  +  λ (E[L0] − target)²,
// where z is sampled from the hard-concrete distribution (GateSampler, sample_gates() and its
// derivative sample_gates_grad()), the task gradient ∂loss/∂z comes from central differences of
// the layer output, and the target number of open gates falls linearly from H to 0 over the first
// 60 % of the steps. At the end every deterministic gate is 0 and the gated layer computes
// exactly what the merged GQA layer computes.
#include "toy_attention.hpp"

#include <headalign/headalign.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

using namespace headalign;

int main(int argc, char** argv) {
  long steps = 400;
  std::uint64_t seed = 7;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) {
      steps = std::atol(argv[++i]);
    } else if (a == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: l0_gates [--steps N] [--seed S]\n");
      return 2;
    }
  }
  try {
    HEADALIGN_CHECK(steps >= 10, "--steps must be at least 10");
    const Index heads = 8, d = 8, hidden = 32, groups = 2, seq = 24;
    std::mt19937_64 rng(seed);
    const toy::Weights mha = toy::redundant_layer(heads, d, hidden, groups, 0.3, rng);
    const toy::Mat mixing = toy::Mat::Identity(hidden, hidden);

    // Calibrate, plan, align (same function) and merge (the GQA target of the annealing).
    HeadGram<double> keys(heads, d, true), values(heads, d, true);
    for (int b = 0; b < 20; ++b)
      toy::forward(mha, toy::hidden_states(seq, hidden, mixing, rng), [&](const toy::RowMat&, const toy::RowMat& k, const toy::RowMat& v) {
        keys.add(k.data(), k.rows(), k.cols());
        values.add(v.data(), v.rows(), v.cols());
      });
    PlanOptions opt;
    opt.num_groups = groups;
    const LayerPlan<double> plan = plan_layer(keys, values, opt);
    toy::Weights aligned = mha;
    apply_alignment(aligned, plan.order, plan.key_rotations, plan.value_rotations);
    const toy::Weights gqa = merge_to_gqa(aligned, groups);

    std::vector<toy::Mat> batch;
    for (int i = 0; i < 4; ++i) batch.push_back(toy::hidden_states(seq, hidden, mixing, rng));
    std::vector<toy::Mat> teacher;
    double norm = 0;
    for (const auto& x : batch) {
      teacher.push_back(toy::forward(aligned, x));
      norm += teacher.back().squaredNorm();
    }
    auto task_loss = [&](const Eigen::ArrayXd& z) {
      const toy::Weights w = gated_weights(aligned, gqa, z.matrix(), z.matrix());
      double e = 0;
      for (std::size_t i = 0; i < batch.size(); ++i) e += (toy::forward(w, batch[i]) - teacher[i]).squaredNorm();
      return e / norm;
    };

    const HardConcrete hc;
    GateSampler sampler(seed);
    Eigen::ArrayXd log_alpha = Eigen::ArrayXd::Constant(heads, 3.0);  // gates start open
    const double lr = 0.05, lambda = 2.0, h = 1e-4;
    std::printf("%6s %10s %10s %12s %14s\n", "step", "target", "E[L0]", "task loss", "open (z > 0)");
    for (long step = 0; step <= steps; ++step) {
      const double target = static_cast<double>(heads) * std::max(0.0, 1.0 - static_cast<double>(step) / (0.6 * static_cast<double>(steps)));
      const Eigen::ArrayXd u = sampler.uniforms_like(log_alpha);
      const Eigen::ArrayXd z = sample_gates(hc, log_alpha, u), dz = sample_gates_grad(hc, log_alpha, u);
      // ∂task/∂z_h by central differences (one gate at a time).
      Eigen::ArrayXd grad = Eigen::ArrayXd::Zero(heads);
      for (Index g = 0; g < heads; ++g) {
        if (dz(g) == 0) continue;  // a clipped gate passes no gradient
        Eigen::ArrayXd zp = z, zm = z;
        zp(g) += h;
        zm(g) -= h;
        grad(g) = (task_loss(zp) - task_loss(zm)) / (2 * h) * dz(g);
      }
      const double l0 = expected_l0(hc, log_alpha);
      grad += lambda * 2 * (l0 - target) * prob_nonzero_grad(hc, log_alpha);
      log_alpha -= lr * grad * static_cast<double>(heads);
      if (step % (steps / 8) == 0 || step == steps) {
        const Eigen::ArrayXd det = deterministic_gates(hc, log_alpha);
        std::printf("%6ld %10.2f %10.2f %12.5f %14lld\n", step, target, l0, task_loss(det),
                    static_cast<long long>((det > 0).count()));
      }
    }
    const Eigen::ArrayXd det = deterministic_gates(hc, log_alpha);
    const toy::Weights student = gated_weights(aligned, gqa, det.matrix(), det.matrix());
    double diff = 0;
    for (const auto& x : batch) diff = std::max(diff, (toy::forward(student, x) - toy::forward(gqa, x)).cwiseAbs().maxCoeff());
    if ((det > 0).any()) {
      std::printf("%lld gates are still open\n", static_cast<long long>((det > 0).count()));
      return 3;
    }
    std::printf("all gates closed: the gated layer is the GQA layer (%lld → %lld KV heads), max output difference %.2e\n",
                static_cast<long long>(heads), static_cast<long long>(groups), diff);
    std::printf("task loss of the merged layer: %.5f (mean-pooled without alignment it would be %.5f)\n", task_loss(det),
                [&] {
                  PlanOptions plain = opt;
                  plain.group_by = GroupBy::None;
                  plain.key_alignment = plain.value_alignment = Alignment::None;
                  const toy::Weights mp = convert_layer(mha, plan_layer(keys, values, plain));
                  double e = 0;
                  for (std::size_t i = 0; i < batch.size(); ++i) e += (toy::forward(mp, batch[i]) - teacher[i]).squaredNorm();
                  return e / norm;
                }());
    return diff < 1e-10 ? 0 : 4;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "l0_gates: error: %s\n", e.what());
    return 1;
  }
}
