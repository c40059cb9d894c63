// How often LocalSearch falls short of HillClimb (the reference's 200 × 3,000 random swaps), and
// how long each takes, on random H-head similarity matrices of three kinds: symmetrised Gaussian,
// symmetrised uniform [0, 1], and cosines of random 6-dimensional directions plus Gaussian noise
// (low rank, like aligned heads). 60 matrices per kind and group count, LocalSearch with
// `--seeds` different seeds each. Prints one line per (kind, groups) and the totals.
//
//   headalign_grouping_quality [--heads H] [--steps N] [--seeds K] [--matrices M]
#include <headalign/grouping.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

using namespace headalign;

namespace {

Matrix<double> instance(int kind, std::uint64_t seed, Index h) {
  std::mt19937_64 rng(seed);
  Matrix<double> m(h, h);
  std::normal_distribution<double> normal(0, 1);
  if (kind == 0) {
    for (Index j = 0; j < h; ++j)
      for (Index i = 0; i < h; ++i) m(i, j) = normal(rng);
  } else if (kind == 1) {
    std::uniform_real_distribution<double> unit(0, 1);
    for (Index j = 0; j < h; ++j)
      for (Index i = 0; i < h; ++i) m(i, j) = unit(rng);
  } else {
    Matrix<double> v(h, 6);
    for (Index j = 0; j < 6; ++j)
      for (Index i = 0; i < h; ++i) v(i, j) = normal(rng);
    v.rowwise().normalize();
    m = v * v.transpose();
    for (Index j = 0; j < h; ++j)
      for (Index i = 0; i < h; ++i) m(i, j) += 0.1 * normal(rng);
  }
  m = (m + m.transpose()).eval();
  m.diagonal().setZero();
  return m;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int positive(const char* flag, const char* value) {
  char* end = nullptr;
  const long v = value ? std::strtol(value, &end, 10) : 0;
  if (!value || *end != '\0' || v <= 0 || v > 1000000000) {
    std::fprintf(stderr, "%s needs a positive integer, got %s\n", flag, value ? value : "nothing");
    std::exit(2);
  }
  return static_cast<int>(v);
}

}  // namespace

int main(int argc, char** argv) {
  Index heads = 32;
  int seeds = 1, matrices = 60;
  GroupingOptions local;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (flag == "--heads") heads = positive(argv[i], value);
    else if (flag == "--steps") local.steps = positive(argv[i], value);
    else if (flag == "--seeds") seeds = positive(argv[i], value);
    else if (flag == "--matrices") matrices = positive(argv[i], value);
    else {
      std::fprintf(stderr, "unknown argument %s (use --heads, --steps, --seeds, --matrices)\n", argv[i]);
      return 2;
    }
    ++i;
  }
  const char* kinds[] = {"gaussian", "uniform", "low-rank"};
  std::printf("H = %ld, LocalSearch steps = %d, %d seed(s), %d matrices per row\n", static_cast<long>(heads), local.steps,
              seeds, matrices);
  std::printf("%-9s %6s %8s %10s %12s %14s\n", "kind", "groups", "short", "worst %", "HillClimb ms", "LocalSearch ms");
  int short_total = 0, runs_total = 0;
  double hc_total = 0, ls_total = 0;
  for (int kind = 0; kind < 3; ++kind)
    for (Index g = 2; g <= heads / 2; g *= 2) {
      if (heads % g != 0) continue;
      int fell_short = 0, runs = 0;
      double worst = 0, hc_time = 0, ls_time = 0;
      for (int m = 0; m < matrices; ++m) {
        const Matrix<double> s = instance(kind, static_cast<std::uint64_t>(1000 * kind + m), heads);
        GroupingOptions hc;
        hc.method = GroupingOptions::Method::HillClimb;
        auto t0 = std::chrono::steady_clock::now();
        const double bar = group_heads(s, g, hc).score;
        hc_time += seconds_since(t0);
        for (int seed = 0; seed < seeds; ++seed) {
          local.seed = static_cast<std::uint64_t>(seed);
          t0 = std::chrono::steady_clock::now();
          const double score = group_heads(s, g, local).score;
          ls_time += seconds_since(t0);
          ++runs;
          if (score < bar - 1e-9 * (1 + std::abs(bar))) {
            ++fell_short;
            worst = std::max(worst, (bar - score) / std::abs(bar));
          }
        }
      }
      std::printf("%-9s %6ld %4d/%-4d %10.3f %12.2f %14.3f\n", kinds[kind], static_cast<long>(g), fell_short, runs,
                  100 * worst, 1e3 * hc_time / matrices, 1e3 * ls_time / runs);
      short_total += fell_short;
      runs_total += runs;
      hc_total += hc_time / matrices;
      ls_total += ls_time / runs;
    }
  std::printf("LocalSearch fell short of HillClimb in %d of %d runs; mean time ratio %.1f×\n", short_total, runs_total,
              hc_total / ls_total);
  return 0;
}
