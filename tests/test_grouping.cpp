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
      o.descents = 20;
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
    o.descents = 5;
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
