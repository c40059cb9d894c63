// Head grouping: planted groups, brute-force optimality of Exact, LocalSearch vs HillClimb, errors.
#include <headalign/grouping.hpp>

#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <set>

using namespace headalign;
using headalign::test::gaussian;
using Method = GroupingOptions::Method;

namespace {

Matrix<double> random_similarity(Index h, std::mt19937_64& rng) {
  Matrix<double> s = gaussian<double>(h, h, rng);
  s = (s + s.transpose()).eval();
  s.diagonal().setZero();
  return s;
}

// Independent brute force: every permutation, contiguous chunks as groups.
double brute_force_best(const Matrix<double>& s, Index g) {
  const Index h = s.rows(), k = h / g;
  std::vector<Index> perm(static_cast<std::size_t>(h));
  std::iota(perm.begin(), perm.end(), Index(0));
  double best = -1e300;
  do {
    double score = 0;
    for (Index c = 0; c < g; ++c)
      for (Index a = 0; a < k; ++a)
        for (Index b = a + 1; b < k; ++b) score += s(perm[static_cast<std::size_t>(c * k + a)], perm[static_cast<std::size_t>(c * k + b)]);
    best = std::max(best, score);
  } while (std::next_permutation(perm.begin(), perm.end()));
  return best;
}

void check_partition(const Grouping& gr, Index h, Index g) {
  REQUIRE(static_cast<Index>(gr.groups.size()) == g);
  std::set<Index> all;
  for (const auto& grp : gr.groups) {
    CHECK(static_cast<Index>(grp.size()) == h / g);
    CHECK(std::is_sorted(grp.begin(), grp.end()));
    all.insert(grp.begin(), grp.end());
  }
  CHECK(static_cast<Index>(all.size()) == h);
  CHECK(*all.begin() == 0);
  CHECK(*all.rbegin() == h - 1);
}

}  // namespace

TEST_CASE("group_contiguous groups adjacent heads", "[grouping]") {
  const Grouping g = group_contiguous(8, 2);
  CHECK(g.groups == std::vector<std::vector<Index>>{{0, 1, 2, 3}, {4, 5, 6, 7}});
  CHECK(g.order() == std::vector<Index>{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK_THROWS_WITH(group_contiguous(12, 5), Catch::Contains("num_heads (12) is not divisible by num_groups (5)"));
}

TEST_CASE("planted groups are recovered exactly by every method", "[grouping]") {
  std::mt19937_64 rng(41);
  for (auto [h, g] : {std::pair<Index, Index>{12, 3}, {16, 4}, {32, 8}, {8, 4}}) {
    std::vector<Index> label(static_cast<std::size_t>(h));
    for (Index i = 0; i < h; ++i) label[static_cast<std::size_t>(i)] = i % g;
    std::shuffle(label.begin(), label.end(), rng);
    Matrix<double> s(h, h);
    std::uniform_real_distribution<double> noise(0.0, 0.3);
    for (Index i = 0; i < h; ++i)
      for (Index j = 0; j <= i; ++j)
        s(i, j) = s(j, i) = (label[static_cast<std::size_t>(i)] == label[static_cast<std::size_t>(j)] ? 0.7 : 0.0) + noise(rng);
    std::vector<Method> methods{Method::HillClimb, Method::LocalSearch};
    if (h <= 16) methods.push_back(Method::Exact);
    for (Method m : methods) {
      CAPTURE(h, g, static_cast<int>(m));
      GroupingOptions o;
      o.method = m;
      o.restarts = 20;
      o.steps = 100;
      const Grouping gr = group_heads(s, g, o);
      check_partition(gr, h, g);
      for (const auto& grp : gr.groups)
        for (Index i : grp) CHECK(label[static_cast<std::size_t>(i)] == label[static_cast<std::size_t>(grp[0])]);
      CHECK(std::abs(gr.score - grouping_score(s, gr.groups)) < 1e-9);
    }
  }
}

TEST_CASE("Exact is optimal (brute force over all permutations)", "[grouping]") {
  std::mt19937_64 rng(42);
  for (auto [h, g] : {std::pair<Index, Index>{6, 2}, {6, 3}, {8, 2}, {8, 4}, {9, 3}}) {
    const Matrix<double> s = random_similarity(h, rng);
    GroupingOptions o;
    o.method = Method::Exact;
    const Grouping gr = group_heads(s, g, o);
    check_partition(gr, h, g);
    CHECK(std::abs(gr.score - brute_force_best(s, g)) < 1e-9);
  }
}

TEST_CASE("LocalSearch reaches HillClimb's score and Exact is at least both", "[grouping]") {
  std::mt19937_64 rng(43);
  for (auto [h, g] : {std::pair<Index, Index>{12, 3}, {16, 4}, {16, 8}, {16, 2}, {32, 8}, {32, 4}, {24, 6}}) {
    for (int trial = 0; trial < (h == 32 ? 8 : 3); ++trial) {
      const Matrix<double> s = random_similarity(h, rng);
      GroupingOptions hc;
      hc.method = Method::HillClimb;
      hc.seed = static_cast<std::uint64_t>(trial);
      GroupingOptions ls = hc;
      ls.method = Method::LocalSearch;
      const Grouping a = group_heads(s, g, hc), b = group_heads(s, g, ls);
      check_partition(a, h, g);
      check_partition(b, h, g);
      std::printf("grouping H=%ld g=%ld trial %d: HillClimb %.6f  LocalSearch %.6f", static_cast<long>(h),
                  static_cast<long>(g), trial, a.score, b.score);
      CHECK(b.score >= a.score - 1e-9);
      if (h <= 16) {
        GroupingOptions ex;
        ex.method = Method::Exact;
        const Grouping c = group_heads(s, g, ex);
        std::printf("  Exact %.6f", c.score);
        CHECK(c.score >= a.score - 1e-9);
        CHECK(c.score >= b.score - 1e-9);
      }
      std::printf("\n");
    }
  }
}

TEST_CASE("grouping is deterministic for a seed and handles trivial group sizes", "[grouping]") {
  std::mt19937_64 rng(44);
  const Matrix<double> s = random_similarity(16, rng);
  for (Method m : {Method::HillClimb, Method::LocalSearch}) {
    GroupingOptions o;
    o.method = m;
    o.seed = 7;
    o.restarts = 5;
    o.steps = 60;
    o.restart_after = 10;
    CHECK(group_heads(s, 4, o).groups == group_heads(s, 4, o).groups);
    const Grouping one = group_heads(s, 1, o);
    CHECK(one.groups.size() == 1);
    CHECK(std::abs(one.score - s.sum() / 2) < 1e-9);
    const Grouping singles = group_heads(s, 16, o);
    CHECK(singles.groups.size() == 16);
    CHECK(singles.score == 0);
  }
  const Matrix<float> sf = s.cast<float>();
  CHECK(group_heads(sf, 4).groups.size() == 4);
}

TEST_CASE("group_heads rejects bad input", "[grouping][errors]") {
  std::mt19937_64 rng(45);
  Matrix<double> s = random_similarity(12, rng);
  CHECK_THROWS_WITH(group_heads(s, 5), Catch::Contains("num_heads (12) is not divisible by num_groups (5)"));
  CHECK_THROWS_AS(group_heads(s, 0), headalign::invalid_argument);
  CHECK_THROWS_WITH(group_heads(Matrix<double>(Matrix<double>::Ones(3, 4)), 1), Catch::Contains("3 × 4"));
  Matrix<double> asym = s;
  asym(0, 1) += 1;
  CHECK_THROWS_WITH(group_heads(asym, 3), Catch::Contains("not symmetric"));
  s(2, 3) = s(3, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(group_heads(s, 3), Catch::Contains("NaN"));
  GroupingOptions ex;
  ex.method = Method::Exact;
  CHECK_THROWS_WITH(group_heads(random_similarity(32, rng), 8, ex), Catch::Contains("exact_max_partitions"));
}

namespace {

// Score of a slot layout (slot x holds heads[x], group of x = x / k), by definition.
double slot_score(const Matrix<double>& s, const std::vector<Index>& heads, Index k) {
  double score = 0;
  for (std::size_t x = 0; x < heads.size(); ++x)
    for (std::size_t y = x + 1; y < heads.size(); ++y)
      if (static_cast<Index>(x) / k == static_cast<Index>(y) / k) score += s(heads[x], heads[y]);
  return score;
}

}  // namespace

TEST_CASE("the swap scan finds the best admissible swap, tabu and aspiration included", "[grouping]") {
  // Shapes cover k below, at and above the 8-wide blocks, k not a multiple of 4, and more than
  // 8 and 16 groups (the Vᵀ lookup then blends 2 and 3 permutes).
  std::mt19937_64 rng(46);
  for (auto [h, g] : {std::pair<Index, Index>{32, 8}, {12, 3}, {20, 4}, {16, 2}, {27, 3}, {35, 5}, {36, 4}, {6, 3}, {40, 2},
                      {32, 16}, {36, 18}, {30, 10}}) {
    CAPTURE(h, g);
    const Index k = h / g;
    const Matrix<double> s = random_similarity(h, rng);
    detail::SwapSearch fast(s, g), portable(s, g);
    portable.portable = true;
    std::vector<Index> heads(static_cast<std::size_t>(h));
    std::iota(heads.begin(), heads.end(), Index(0));
    std::shuffle(heads.begin(), heads.end(), rng);
    fast.load(heads);
    portable.load(heads);
    std::vector<std::int32_t> tabu(static_cast<std::size_t>(h), 0);  // by head, kept here independently
    double best = fast.score();
    std::uniform_int_distribution<int> tenure(1, 4);
    for (std::int32_t step = 1; step <= 150; ++step) {
      const double need = best - fast.score();
      // Brute force over all pairs with the exact gains (score after − score before).
      const std::vector<Index> now = fast.heads();
      double best_free = -1e300, best_any = -1e300;
      for (Index p = 0; p < h; ++p)
        for (Index q = (p / k + 1) * k; q < h; ++q) {
          std::vector<Index> after = now;
          std::swap(after[static_cast<std::size_t>(p)], after[static_cast<std::size_t>(q)]);
          const double gain = slot_score(s, after, k) - slot_score(s, now, k);
          CHECK(std::abs(gain - fast.exact_gain(p, q)) < 1e-9);
          best_any = std::max(best_any, gain);
          if (tabu[static_cast<std::size_t>(now[static_cast<std::size_t>(p)])] <= step &&
              tabu[static_cast<std::size_t>(now[static_cast<std::size_t>(q)])] <= step)
            best_free = std::max(best_free, gain);
        }
      Index p = -1, q = -1, p2 = -1, q2 = -1;
      const bool found = fast.best_move(step, need, p, q);
      REQUIRE(found == portable.best_move(step, need, p2, q2));
      CHECK(p == p2);  // the portable and the AVX2 scans pick the same pair
      CHECK(q == q2);
      if (!found) {
        CHECK(best_any <= need + 1e-5);
        CHECK(best_free == -1e300);
        fast.load(now);
        portable.load(now);
        std::fill(tabu.begin(), tabu.end(), std::int32_t(0));
        continue;
      }
      REQUIRE(p / k != q / k);
      const double gain = fast.exact_gain(p, q);
      // The float scan may resolve gains closer than its rounding either way.
      const double tol = 1e-5 * (1 + s.cwiseAbs().maxCoeff());
      if (best_any > need + tol) {
        CHECK(gain >= best_any - tol);  // aspiration: the best of all pairs
      } else if (best_any < need - tol) {
        CHECK(gain >= best_free - tol);  // no new best possible: the best pair without a tabu head
        CHECK(tabu[static_cast<std::size_t>(now[static_cast<std::size_t>(p)])] <= step);
        CHECK(tabu[static_cast<std::size_t>(now[static_cast<std::size_t>(q)])] <= step);
      }
      fast.apply(p, q);
      portable.apply(p, q);
      CHECK(fast.heads() == portable.heads());
      CHECK(std::abs(fast.score() - slot_score(s, fast.heads(), k)) < 1e-9);
      const Index hp = fast.heads()[static_cast<std::size_t>(q)], hq = fast.heads()[static_cast<std::size_t>(p)];
      const int tp = tenure(rng), tq = tenure(rng);
      tabu[static_cast<std::size_t>(hp)] = step + 1 + tp;
      tabu[static_cast<std::size_t>(hq)] = step + 1 + tq;
      fast.forbid(q, step + 1 + tp);
      portable.forbid(q, step + 1 + tp);
      fast.forbid(p, step + 1 + tq);
      portable.forbid(p, step + 1 + tq);
      best = std::max(best, fast.score());
    }
  }
}

TEST_CASE("LocalSearch finds the Exact optimum on small instances", "[grouping]") {
  std::mt19937_64 rng(47);
  std::uniform_real_distribution<double> unit(0, 1);
  for (auto [h, g] : {std::pair<Index, Index>{4, 2}, {6, 3}, {8, 2}, {8, 4}, {9, 3}, {10, 5}, {12, 3}, {12, 4}, {12, 6}}) {
    for (int trial = 0; trial < 6; ++trial) {
      CAPTURE(h, g, trial);
      Matrix<double> s = random_similarity(h, rng);
      if (trial % 2 == 1) s = s.unaryExpr([&](double) { return unit(rng); }).eval();  // non-negative, as cosines of aligned heads
      s = (0.5 * (s + s.transpose())).eval();
      s.diagonal().setZero();
      GroupingOptions ex;
      ex.method = Method::Exact;
      const Grouping best = group_heads(s, g, ex), ls = group_heads(s, g);
      check_partition(ls, h, g);
      CHECK(ls.score >= best.score - 1e-9);
      CHECK(std::abs(ls.score - grouping_score(s, ls.groups)) < 1e-12 * (1 + std::abs(ls.score)));
    }
  }
}

TEST_CASE("LocalSearch does not depend on the similarity's scale", "[grouping]") {
  std::mt19937_64 rng(48);
  const Matrix<double> s = random_similarity(32, rng);
  const Grouping base = group_heads(s, 8);
  // Powers of two leave every float of the search unchanged: the same grouping, exactly scaled.
  for (double f : {0x1p-900, 0x1p-60, 0x1p+40, 0x1p+1000}) {
    CAPTURE(f);
    const Grouping scaled = group_heads(Matrix<double>(s * f), 8);
    CHECK(scaled.groups == base.groups);
    CHECK(scaled.score == base.score * f);
  }
  // Any other scale and subnormal-sized similarities: still a valid grouping at least as good as
  // the contiguous one (HillClimb's score at this size is checked above).
  for (double f : {1e-310, 3.7e-20, 1e150}) {
    CAPTURE(f);
    const Matrix<double> t = s * f;
    const Grouping scaled = group_heads(t, 8);
    check_partition(scaled, 32, 8);
    CHECK(scaled.score >= grouping_score(t, group_contiguous(32, 8).groups));
    CHECK(std::isfinite(scaled.score));
  }
}
