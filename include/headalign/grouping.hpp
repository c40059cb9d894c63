/// @file grouping.hpp
/// @brief Partition of H heads into g equal groups maximising the similarity inside groups.
///
/// Objective (Sec. 3.3 of arXiv 2412.20677): \f$ \sum_{c} \sum_{i<j \in c} s_{ij} \f$ over groups
/// of H/g heads each. The reference searches it by random-restart hill climbing; `LocalSearch`
/// keeps, for every head h and group c, \f$ S_{hc} = \sum_{j \in c} s_{hj} \f$, so the gain of
/// swapping heads a ∈ A and b ∈ B is \f$ S_{aB} - S_{aA} + S_{bA} - S_{bB} - 2 s_{ab} \f$ in O(1),
/// and runs a tabu search over all swaps (detail/swap_search.hpp).
#ifndef HEADALIGN_GROUPING_HPP
#define HEADALIGN_GROUPING_HPP

#include "config.hpp"
#include "detail/numeric.hpp"
#include "detail/swap_search.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

namespace headalign {

/// @brief A partition of heads into groups; `score` = sum of similarities of pairs inside groups.
struct Grouping {
  std::vector<std::vector<Index>> groups;
  double score = 0;

  /// The head order that makes the groups contiguous: group c's heads, ascending, then group c+1's.
  std::vector<Index> order() const {
    std::vector<Index> out;
    for (const auto& g : groups) out.insert(out.end(), g.begin(), g.end());
    return out;
  }
};

/// @brief How group_heads() searches.
struct GroupingOptions {
  enum class Method {
    HillClimb,    ///< the reference: restarts × iterations random swaps, keep strict improvements
    LocalSearch,  ///< tabu search over all swaps with O(1) gains, random restarts, steepest-ascent finish
    Exact         ///< exhaustive, optimal (small instances only)
  };
  Method method = Method::LocalSearch;
  int restarts = 200;     ///< HillClimb: random starts (the reference's 200)
  int iterations = 3000;  ///< HillClimb: proposals per start
  /// LocalSearch: swaps in all (the budget). Each step makes the best admissible swap of all
  /// (H²(1 − 1/g)/2 of them), even a worsening one; the two heads it moves may not move again
  /// for the next 1 to max(4, H/8 − 1) steps (drawn at random) unless that reaches a new best
  /// (tabu search, Glover 1989); with groups of two, their partners too (swapping those would
  /// restore the partition). How often 2000 steps fall short of HillClimb's score (200 × 3000)
  /// is measured by benchmarks/grouping_quality.cpp (benchmarks/README.md): both are heuristics,
  /// a budget rather than a guarantee (Exact is one).
  int steps = 2000;
  /// LocalSearch: a run starts again from a random grouping after this many steps without
  /// improving its own best.
  int restart_after = 50;
  std::uint64_t seed = 0;
  /// LocalSearch stops after this many steps in a row without a better grouping (0: run all).
  int patience = 0;
  /// Exact refuses instances with more partitions than this.
  double exact_max_partitions = 5e7;
};

namespace detail {

inline void check_group_counts(Index num_heads, Index num_groups) {
  HEADALIGN_CHECK(num_heads > 0, "num_heads (" << num_heads << ") must be positive");
  HEADALIGN_CHECK(num_groups > 0, "num_groups (" << num_groups << ") must be positive");
  HEADALIGN_CHECK(num_heads % num_groups == 0,
                  "num_heads (" << num_heads << ") is not divisible by num_groups (" << num_groups << ")");
}

/// Number of partitions of h heads into g unordered groups of h/g: h! / ((h/g)!^g g!).
inline double partition_count(Index h, Index g) {
  const double k = static_cast<double>(h / g);
  return std::exp(std::lgamma(static_cast<double>(h) + 1) - static_cast<double>(g) * std::lgamma(k + 1) -
                  std::lgamma(static_cast<double>(g) + 1));
}

/// Groups from a head → group assignment, heads ascending inside groups, groups by first head.
inline std::vector<std::vector<Index>> groups_from_assignment(const std::vector<Index>& assign,
                                                              Index num_groups) {
  std::vector<std::vector<Index>> groups(static_cast<std::size_t>(num_groups));
  for (std::size_t h = 0; h < assign.size(); ++h)
    groups[static_cast<std::size_t>(assign[h])].push_back(static_cast<Index>(h));
  std::sort(groups.begin(), groups.end());
  return groups;
}

}  // namespace detail

/// @brief Sum of similarities over the pairs inside each group of @p grouping.
/// @throws invalid_argument for a non-square similarity, or a head outside it or in two groups
template <class S>
double grouping_score(const Matrix<S>& similarity, const std::vector<std::vector<Index>>& groups) {
  HEADALIGN_CHECK(similarity.rows() == similarity.cols(), "grouping_score: similarity must be square, got "
                                                              << similarity.rows() << " × "
                                                              << similarity.cols());
  detail::HeadSet heads(similarity.rows(), "grouping_score");
  double score = 0;
  for (const auto& g : groups) {
    heads.add(g, "in the groups");
    for (std::size_t a = 0; a < g.size(); ++a)
      for (std::size_t b = a + 1; b < g.size(); ++b) score += static_cast<double>(similarity(g[a], g[b]));
  }
  return score;
}

/// @brief Adjacent heads grouped together, as plain GQA does: group c = {c·k, …, c·k + k − 1}, k = H/g.
/// `score` is 0 (no similarity is known); see grouping_score().
/// @throws invalid_argument when num_heads is not divisible by num_groups
inline Grouping group_contiguous(Index num_heads, Index num_groups) {
  detail::check_group_counts(num_heads, num_groups);
  Grouping out;
  const Index k = num_heads / num_groups;
  for (Index c = 0; c < num_groups; ++c) {
    out.groups.emplace_back(static_cast<std::size_t>(k));
    std::iota(out.groups.back().begin(), out.groups.back().end(), c * k);
  }
  return out;
}

namespace detail {

/// A random grouping: heads shuffled, slot p to group p / k.
template <class Rng>
void random_assignment(std::vector<Index>& assign, Index k, Rng& rng) {
  std::vector<Index> perm(assign.size());
  std::iota(perm.begin(), perm.end(), Index(0));
  std::shuffle(perm.begin(), perm.end(), rng);
  for (std::size_t p = 0; p < perm.size(); ++p)
    assign[static_cast<std::size_t>(perm[p])] = static_cast<Index>(p) / k;
}

/// `Exact`: depth-first enumeration of all partitions; the lowest unassigned head opens the next
/// group, which is filled with every (k − 1)-subset of the remaining heads in increasing order.
inline std::vector<Index> exact_grouping(const Matrix<double>& sim, Index num_groups,
                                         const GroupingOptions& options) {
  const Index h = sim.rows(), k = h / num_groups;
  const double count = partition_count(h, num_groups);
  HEADALIGN_CHECK(count <= options.exact_max_partitions,
                  "Exact grouping of " << h << " heads into " << num_groups << " groups would enumerate "
                                       << count << " partitions (limit exact_max_partitions = "
                                       << options.exact_max_partitions << "); use LocalSearch");
  std::vector<Index> assign(static_cast<std::size_t>(h), -1), best_assign;
  double best_score = -std::numeric_limits<double>::infinity();
  auto recurse = [&](auto&& self, Index group, double score) -> void {
    if (group == num_groups) {
      if (score > best_score) {
        best_score = score;
        best_assign = assign;
      }
      return;
    }
    Index first = 0;
    while (assign[static_cast<std::size_t>(first)] >= 0) ++first;
    assign[static_cast<std::size_t>(first)] = group;
    std::vector<Index> members{first};  // this group's heads so far (one vector per depth)
    members.reserve(static_cast<std::size_t>(k));
    auto fill = [&](auto&& fill_self, Index from, double s) -> void {
      if (static_cast<Index>(members.size()) == k) {
        self(self, group + 1, s);
        return;
      }
      for (Index c = from; c < h; ++c) {
        if (assign[static_cast<std::size_t>(c)] >= 0) continue;
        double add = 0;
        for (Index m : members) add += sim(m, c);
        assign[static_cast<std::size_t>(c)] = group;
        members.push_back(c);
        fill_self(fill_self, c + 1, s + add);
        members.pop_back();
        assign[static_cast<std::size_t>(c)] = -1;
      }
    };
    fill(fill, first + 1, score);
    assign[static_cast<std::size_t>(first)] = -1;
  };
  recurse(recurse, 0, 0.0);
  return best_assign;
}

/// `HillClimb`, as the reference: from `restarts` random groupings, propose swapping two random
/// heads of different groups `iterations` times, keeping a swap only when the objective strictly
/// improves (its gain computed from the two groups); the best run wins.
inline std::vector<Index> hill_climb_grouping(const Matrix<double>& sim, Index num_groups,
                                              const GroupingOptions& options) {
  const Index h = sim.rows(), k = h / num_groups;
  std::mt19937_64 rng(options.seed);
  std::vector<Index> assign(static_cast<std::size_t>(h)), best_assign;
  double best_score = -std::numeric_limits<double>::infinity();
  std::uniform_int_distribution<Index> pick(0, h - 1);
  for (int r = 0; r < options.restarts; ++r) {
    random_assignment(assign, k, rng);
    double score = 0;
    for (Index i = 0; i < h; ++i)
      for (Index j = i + 1; j < h; ++j)
        if (assign[static_cast<std::size_t>(i)] == assign[static_cast<std::size_t>(j)]) score += sim(i, j);
    for (int it = 0; it < options.iterations; ++it) {
      // Two random heads of different groups (g ≥ 2 here, so the loop ends).
      const Index a = pick(rng);
      Index b = pick(rng);
      while (assign[static_cast<std::size_t>(b)] == assign[static_cast<std::size_t>(a)]) b = pick(rng);
      const Index ga = assign[static_cast<std::size_t>(a)], gb = assign[static_cast<std::size_t>(b)];
      double gain = 0;
      for (Index j = 0; j < h; ++j) {
        const Index gj = assign[static_cast<std::size_t>(j)];
        if (j == a || j == b) continue;
        if (gj == ga)
          gain += sim(b, j) - sim(a, j);
        else if (gj == gb)
          gain += sim(a, j) - sim(b, j);
      }
      if (gain > 0) {
        std::swap(assign[static_cast<std::size_t>(a)], assign[static_cast<std::size_t>(b)]);
        score += gain;
      }
    }
    if (score > best_score) {
      best_score = score;
      best_assign = assign;
    }
  }
  return best_assign;
}

/// Steepest ascent over all swaps with the exact double gains, from @p assign (head → group) to a
/// local optimum of the swap neighbourhood: gains must exceed @p eps.
inline void steepest_ascent(const Matrix<double>& sim, Index num_groups, double eps,
                            std::vector<Index>& assign) {
  const Index h = sim.rows();
  Matrix<double> gs = Matrix<double>::Zero(h, num_groups);
  for (Index i = 0; i < h; ++i)
    for (Index j = 0; j < h; ++j) gs(i, assign[static_cast<std::size_t>(j)]) += sim(i, j);
  for (;;) {
    double best_gain = eps;
    Index ba = -1, bb = -1;
    for (Index a = 0; a < h; ++a) {
      const Index ga = assign[static_cast<std::size_t>(a)];
      for (Index b = a + 1; b < h; ++b) {
        const Index gb = assign[static_cast<std::size_t>(b)];
        if (ga == gb) continue;
        const double gain = gs(a, gb) - gs(a, ga) + gs(b, ga) - gs(b, gb) - 2 * sim(a, b);
        if (gain > best_gain) {
          best_gain = gain;
          ba = a;
          bb = b;
        }
      }
    }
    if (ba < 0) return;
    const Index ga = assign[static_cast<std::size_t>(ba)], gb = assign[static_cast<std::size_t>(bb)];
    for (Index x = 0; x < h; ++x) {
      const double delta = sim(x, bb) - sim(x, ba);
      gs(x, ga) += delta;
      gs(x, gb) -= delta;
    }
    std::swap(assign[static_cast<std::size_t>(ba)], assign[static_cast<std::size_t>(bb)]);
  }
}

/// The tabu tenures of LocalSearch: a slot moved at `step` stays tabu until step + 1 + tenure
/// (exclusive), the tenure in [1, longest] from 16 random bits, four per draw of the generator:
/// each value's probability is within a factor 1 ± longest/2^16 of uniform (± 0.2 % at 1,024
/// heads); steps stay ≤ INT_MAX, so the end is clamped instead of overflowing.
class TabuTenures {
 public:
  explicit TabuTenures(std::uint64_t longest) : longest_(longest) {}

  template <class Rng>
  std::int32_t until(std::int64_t step, Rng& rng) {
    if (bits_left_ == 0) {
      bits_ = rng();
      bits_left_ = 4;
    }
    const std::int64_t tenure = 1 + static_cast<std::int64_t>(((bits_ & 0xFFFFu) * longest_) >> 16);
    bits_ >>= 16;
    --bits_left_;
    return static_cast<std::int32_t>(
        std::min<std::int64_t>(step + 1 + tenure, std::numeric_limits<std::int32_t>::max()));
  }

 private:
  std::uint64_t longest_, bits_ = 0;
  int bits_left_ = 0;
};

/// `LocalSearch`: every step makes the best admissible swap (detail::SwapSearch), restarting from a
/// random grouping after `restart_after` steps without a better grouping in the run; the best
/// grouping found is finished by steepest_ascent() in double.
inline std::vector<Index> local_search_grouping(const Matrix<double>& sim, Index num_groups,
                                                const GroupingOptions& options) {
  const Index h = sim.rows(), k = h / num_groups;
  std::mt19937_64 rng(options.seed);
  SwapSearch search(sim, num_groups);
  const double eps = 1e-12 * sim.cwiseAbs().maxCoeff();  // relative: any scale searches alike
  TabuTenures tenures(static_cast<std::uint64_t>(std::max<Index>(4, h / 8 - 1)));
  std::vector<Index> slots(static_cast<std::size_t>(h)), best_assign;
  std::iota(slots.begin(), slots.end(), Index(0));
  double best_score = -std::numeric_limits<double>::infinity();
  std::int64_t step = 0, since_best = 0;
  auto forbid = [&](Index slot) { search.forbid(slot, tenures.until(step, rng)); };
  bool stop = false;
  while (!stop && step < options.steps) {
    std::shuffle(slots.begin(), slots.end(), rng);
    search.load(slots);
    double run_best = search.score();
    std::int64_t last = step;
    if (best_assign.empty() || search.score() > best_score + eps) {
      best_score = search.score();
      best_assign = search.heads();
    }
    while (step < options.steps && step - last < options.restart_after) {
      ++step;
      Index p = -1, q = -1;
      if (!search.best_move(static_cast<std::int32_t>(step), best_score - search.score() + eps, p, q)) break;
      search.apply(p, q);
      // With pairs (k = 2) the partners too: swapping them would restore the old partition.
      forbid(p);
      forbid(q);
      if (k == 2) {
        forbid(p % 2 == 0 ? p + 1 : p - 1);
        forbid(q % 2 == 0 ? q + 1 : q - 1);
      }
      if (search.score() > run_best + eps) {
        run_best = search.score();
        last = step;
      }
      if (search.score() > best_score + eps) {
        best_score = search.score();
        best_assign = search.heads();
        since_best = 0;
      } else if (options.patience > 0 && ++since_best >= options.patience) {
        stop = true;
        break;
      }
    }
  }
  // best_assign lists heads by slot; slot x belongs to group x / k.
  std::vector<Index> assign(static_cast<std::size_t>(h));
  for (Index x = 0; x < h; ++x)
    assign[static_cast<std::size_t>(best_assign[static_cast<std::size_t>(x)])] = x / k;
  // Finish in double, so the result is a local optimum of the swap neighbourhood whatever float
  // rounding did during the search.
  steepest_ascent(sim, num_groups, eps, assign);
  return assign;
}

}  // namespace detail

/// @brief Equal-size grouping of heads maximising the sum of within-group similarities.
///
/// @param similarity symmetric H × H (the diagonal is ignored), e.g. from similarity_matrix()
/// @param num_groups g, dividing H
/// @param options search method, effort and seed; deterministic for a given seed
/// @return groups with heads ascending, ordered by their first head, and their score
/// @throws invalid_argument for a non-square, non-symmetric or non-finite similarity, H not
///         divisible by g, or an Exact instance above `exact_max_partitions`
template <class S>
Grouping group_heads(const Matrix<S>& similarity, Index num_groups, GroupingOptions options = {}) {
  const Index h = similarity.rows();
  HEADALIGN_CHECK(similarity.rows() == similarity.cols(),
                  "similarity must be square, got " << similarity.rows() << " × " << similarity.cols());
  detail::check_finite(similarity, "similarity");
  detail::check_group_counts(h, num_groups);
  HEADALIGN_CHECK(options.restarts > 0 && options.iterations >= 0 && options.steps > 0 &&
                      options.restart_after > 0 && options.patience >= 0,
                  "restarts (" << options.restarts << "), steps (" << options.steps << ") and restart_after ("
                               << options.restart_after << ") must be positive, iterations ("
                               << options.iterations << ") and patience (" << options.patience
                               << ") non-negative");
  // Work in double on a symmetrised copy with a zero diagonal.
  Matrix<double> sim = similarity.template cast<double>();
  const double asym = (sim - sim.transpose()).cwiseAbs().maxCoeff();
  HEADALIGN_CHECK(asym <= 1e-6 * (1.0 + sim.cwiseAbs().maxCoeff()),
                  "similarity is not symmetric (max |s_ij − s_ji| = " << asym << ")");
  sim = (0.5 * (sim + sim.transpose())).eval();
  sim.diagonal().setZero();

  std::vector<Index> assign(static_cast<std::size_t>(h));
  if (num_groups == 1 || h == num_groups) {  // one partition only
    for (Index i = 0; i < h; ++i) assign[static_cast<std::size_t>(i)] = num_groups == 1 ? 0 : i;
  } else {
    switch (options.method) {
      case GroupingOptions::Method::Exact:
        assign = detail::exact_grouping(sim, num_groups, options);
        break;
      case GroupingOptions::Method::HillClimb:
        assign = detail::hill_climb_grouping(sim, num_groups, options);
        break;
      case GroupingOptions::Method::LocalSearch:
        assign = detail::local_search_grouping(sim, num_groups, options);
        break;
    }
  }
  Grouping best;
  best.groups = detail::groups_from_assignment(assign, num_groups);
  best.score = grouping_score(sim, best.groups);
  return best;
}

}  // namespace headalign

#endif  // HEADALIGN_GROUPING_HPP
