/// @file detail/swap_search.hpp
/// @brief The swap neighbourhood of an equal-size grouping, scanned whole at every step, for
/// group_heads()'s LocalSearch (a tabu search).
///
/// Heads sit in slots, group c owning slots [c·k, c·k + k). With the similarity in slot order
/// P, the group sums \f$ G_{cx} = \sum_{y \in c} P_{xy} \f$, \f$ o_x = G_{c(x)x} \f$ and
/// \f$ V_{cx} = G_{cx} - o_x \f$ (what head x gains by moving to c, before the head it displaces
/// leaves), swapping slot p of group A with slot q of group B changes the objective by
/// \f[ \Delta(p, q) = V_{Bp} + V_{Aq} - 2 P_{pq}. \f]
/// The expansion \f$ E_{py} = V_{c(y)p} \f$ (kept for c(y) > c(p)) turns the gains of row p against every later group
/// into one contiguous expression, \f$ E_{p\cdot} + V_{A\cdot} - 2P_{p\cdot} \f$, so a scan of all
/// \f$ \binom{g}{2} k^2 \f$ swaps runs 8 floats at a time (AVX2, chosen at run time), and a swap
/// updates G, V and E in O(H·k + H·g). The search works in float on the similarity scaled by a
/// power of two (max |s| in [1/2, 1)); the score it reports is kept exactly, in double, from the
/// unscaled similarity, and group_heads() finishes with a double-precision steepest ascent.
///
/// Define HEADALIGN_NO_SIMD_SWAP_SEARCH to use only the portable scan (same moves, same result).
#ifndef HEADALIGN_DETAIL_SWAP_SEARCH_HPP
#define HEADALIGN_DETAIL_SWAP_SEARCH_HPP

#include "../config.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(HEADALIGN_NO_SIMD_SWAP_SEARCH)
#define HEADALIGN_SIMD_SWAP_SEARCH 1
#include <immintrin.h>
#else
#define HEADALIGN_SIMD_SWAP_SEARCH 0
#endif

namespace headalign {
namespace detail {

/// Swap-neighbourhood state of one grouping (slots, P, G, V, E) with a tabu list by slot.
class SwapSearch {
 public:
  /// @param sim symmetric H × H with a zero diagonal and finite entries; @param num_groups g ≥ 2
  /// dividing H with H/g ≥ 2 (group_heads() checks all of this before)
  SwapSearch(const Matrix<double>& sim, Index num_groups)
      : sim_(sim), h_(sim.rows()), g_(num_groups), k_(sim.rows() / num_groups) {
    ld_ = (h_ + 7) / 8 * 8 + 8;  // room for an 8-wide load that starts at any column < H
    const double top = sim.cwiseAbs().maxCoeff();
    if (top > 0) std::frexp(top, &exponent_);  // top = f · 2^exponent_, f in [1/2, 1)
    sf_.resize(static_cast<std::size_t>(h_ * h_));
    for (Index x = 0; x < h_; ++x)
      for (Index y = 0; y < h_; ++y)
        sf_[static_cast<std::size_t>(x * h_ + y)] = static_cast<float>(std::ldexp(sim(x, y), -exponent_));
    group_.resize(static_cast<std::size_t>(h_));
    for (Index x = 0; x < h_; ++x) group_[static_cast<std::size_t>(x)] = x / k_;
    p_.assign(static_cast<std::size_t>(h_ * ld_), 0.0f);
    e_.assign(static_cast<std::size_t>(h_ * ld_), 0.0f);
    gsum_.assign(static_cast<std::size_t>(g_ * ld_), 0.0f);
    v_.assign(static_cast<std::size_t>(g_ * ld_), -std::numeric_limits<float>::infinity());
    own_.assign(static_cast<std::size_t>(ld_), 0.0f);
    pen_.assign(static_cast<std::size_t>(ld_), 0.0f);
    heads_.resize(static_cast<std::size_t>(h_));
    tabu_.assign(static_cast<std::size_t>(h_), 0);
  }

  /// Slot x holds head `heads[x]`; clears the tabu list.
  void load(const std::vector<Index>& heads) {
    heads_ = heads;
    for (Index x = 0; x < h_; ++x) {
      const float* const src = &sf_[static_cast<std::size_t>(head(x) * h_)];
      float* const row = &p_[at(x, 0)];
      for (Index y = 0; y < h_; ++y) row[y] = src[head(y)];
    }
    score_ = 0;
    for (Index c = 0; c < g_; ++c) {
      for (Index x = 0; x < h_; ++x) {
        const float* const row = &p_[at(x, c * k_)];
        float t = 0;
        for (Index i = 0; i < k_; ++i) t += row[i];
        gsum_[static_cast<std::size_t>(c * ld_ + x)] = t;
      }
      for (Index x = c * k_; x < c * k_ + k_; ++x)
        for (Index y = x + 1; y < c * k_ + k_; ++y) score_ += sim_(head(x), head(y));
    }
    for (Index x = 0; x < h_; ++x) own_[static_cast<std::size_t>(x)] = gsum_[static_cast<std::size_t>(grp(x) * ld_ + x)];
    for (Index c = 0; c < g_; ++c)
      for (Index x = 0; x < h_; ++x) refresh_v(c, x);
    for (Index x = 0; x < h_; ++x) refresh_e_row(x);
    std::fill(tabu_.begin(), tabu_.end(), std::int64_t(0));
  }

  /// Use the portable scan and updates even where AVX2 is available (they give the same moves).
  bool portable = false;

  /// The objective of the current slots, exact (double, unscaled).
  double score() const { return score_; }
  const std::vector<Index>& heads() const { return heads_; }
  /// The swaps of slot x are tabu until step `until` (exclusive).
  void forbid(Index x, std::int64_t until) { tabu_[static_cast<std::size_t>(x)] = until; }

  /// Exact change of the objective when slots p and q (of different groups) swap heads.
  double exact_gain(Index p, Index q) const {
    const Index a = grp(p), b = grp(q), hp = head(p), hq = head(q);
    double gain = 0;
    for (Index y = b * k_; y < b * k_ + k_; ++y)
      if (y != q) gain += sim_(hp, head(y)) - sim_(hq, head(y));
    for (Index y = a * k_; y < a * k_ + k_; ++y)
      if (y != p) gain += sim_(hq, head(y)) - sim_(hp, head(y));
    return gain;
  }

  /// The best admissible swap at `step`: the largest (float) gain over pairs with no tabu slot,
  /// unless some pair gains more than `need` (aspiration, in units of the similarity), then the
  /// largest gain of all. Ties go
  /// to the first pair in row-major slot order, so both scans pick the same move.
  /// @return false when every pair is tabu and none reaches `need`
  bool best_move(std::int64_t step, double need, Index& bp, Index& bq) {
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    need = std::ldexp(need, -exponent_);  // the float gains are in units of the scaled similarity
    for (Index y = 0; y < h_; ++y) pen_[static_cast<std::size_t>(y)] = tabu_[static_cast<std::size_t>(y)] > step ? ninf : 0.0f;
#if HEADALIGN_SIMD_SWAP_SEARCH
    if (!portable && avx2()) return best_move_avx2(need, bp, bq);
#endif
    float mu = ninf, mp = ninf;
    Index pu = -1, qu = -1, pp = -1, qp = -1;
    for (Index a = 0; a + 1 < g_; ++a)
      for (Index p = a * k_; p < a * k_ + k_; ++p) {
        const bool free_row = pen_[static_cast<std::size_t>(p)] == 0;
        for (Index y = (a + 1) * k_; y < h_; ++y) {
          const float gv = gain_f(a, p, y);
          if (gv > mu) {
            mu = gv;
            pu = p;
            qu = y;
          }
          if (free_row && pen_[static_cast<std::size_t>(y)] == 0 && gv > mp) {
            mp = gv;
            pp = p;
            qp = y;
          }
        }
      }
    if (pu >= 0 && static_cast<double>(mu) > need) {
      bp = pu;
      bq = qu;
      return true;
    }
    bp = pp;
    bq = qp;
    return pp >= 0;
  }

  /// Swaps the heads of slots p and q (different groups) and updates P, G, V, E and the score.
  void apply(Index p, Index q) {
    score_ += exact_gain(p, q);
    const Index a = grp(p), b = grp(q), h = h_, k = k_, ld = ld_;
    float* const P = p_.data();
    float* const G = gsum_.data();
    float* const V = v_.data();
    float* const E = e_.data();
    float* const own = own_.data();
    float* const ga = G + a * ld;
    float* const gb = G + b * ld;
    float* const rp = P + p * ld;
    float* const rq = P + q * ld;
    for (Index x = 0; x < h; ++x) {
      const float d = rq[x] - rp[x];  // P is symmetric: column q − column p
      ga[x] += d;
      gb[x] -= d;
    }
    std::swap_ranges(rp, rp + h, rq);
    for (Index x = 0; x < h; ++x) std::swap(P[x * ld + p], P[x * ld + q]);
    for (Index c = 0; c < g_; ++c) std::swap(G[c * ld + p], G[c * ld + q]);
    std::swap(heads_[static_cast<std::size_t>(p)], heads_[static_cast<std::size_t>(q)]);
    std::swap(tabu_[static_cast<std::size_t>(p)], tabu_[static_cast<std::size_t>(q)]);
    for (Index i = 0; i < k; ++i) {
      own[a * k + i] = ga[a * k + i];
      own[b * k + i] = gb[b * k + i];
    }
    // V changes in rows a, b (all slots) and in the slots of a and b (all rows); E follows V.
    float* const va = V + a * ld;
    float* const vb = V + b * ld;
    for (Index x = 0; x < h; ++x) {
      va[x] = ga[x] - own[x];
      vb[x] = gb[x] - own[x];
    }
    for (Index c = 0; c < g_; ++c)
      for (Index i = 0; i < k; ++i) {
        V[c * ld + a * k + i] = G[c * ld + a * k + i] - own[a * k + i];
        V[c * ld + b * k + i] = G[c * ld + b * k + i] - own[b * k + i];
      }
    // The scan reads E only right of a row's own group (later groups).
#if HEADALIGN_SIMD_SWAP_SEARCH
    if (!portable && avx2()) {
      refresh_e_avx2(a, b);
      return;
    }
#endif
    for (Index x = 0; x < h; ++x) {
      float* const ex = E + x * ld;
      const Index c = grp(x);
      if (c == a || c == b) {
        for (Index cc = c + 1; cc < g_; ++cc) std::fill_n(ex + cc * k, k, V[cc * ld + x]);
      } else {
        if (a > c) std::fill_n(ex + a * k, k, va[x]);
        if (b > c) std::fill_n(ex + b * k, k, vb[x]);
      }
    }
  }

 private:
  std::size_t at(Index x, Index y) const { return static_cast<std::size_t>(x * ld_ + y); }
  Index grp(Index x) const { return group_[static_cast<std::size_t>(x)]; }
  Index head(Index x) const { return heads_[static_cast<std::size_t>(x)]; }
  void refresh_v(Index c, Index x) {
    v_[static_cast<std::size_t>(c * ld_ + x)] = gsum_[static_cast<std::size_t>(c * ld_ + x)] - own_[static_cast<std::size_t>(x)];
  }
  void refresh_e_row(Index x) {
    for (Index c = grp(x) + 1; c < g_; ++c) {
      const float v = v_[static_cast<std::size_t>(c * ld_ + x)];
      for (Index y = c * k_; y < c * k_ + k_; ++y) e_[at(x, y)] = v;
    }
  }
  // Δ(p, y) in float, p in group a: (E + V) + (−2P). −2P is exact, so a fused multiply–add gives
  // the same float as the two roundings: the portable and the AVX2 scans agree bit for bit.
  float gain_f(Index a, Index p, Index y) const {
    const float t = e_[at(p, y)] + v_[static_cast<std::size_t>(a * ld_ + y)];
    return t + -2.0f * p_[at(p, y)];
  }

#if HEADALIGN_SIMD_SWAP_SEARCH
  static bool avx2() {
    static const bool ok = [] {
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") != 0;
    }();
    return ok;
  }

  // Row p's gains against every later group, 8 at a time (lanes past H read V = −inf).
  __attribute__((target("avx2"))) void row_max_avx2(Index a, Index p, bool penalised, __m256& mu, __m256& mp) const {
    const float* e = &e_[at(p, 0)];
    const float* r = &p_[at(p, 0)];
    const float* v = &v_[static_cast<std::size_t>(a * ld_)];
    const __m256 m2 = _mm256_set1_ps(-2.0f);
    for (Index y = (a + 1) * k_; y < h_; y += 8) {
      const __m256 gv = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(e + y), _mm256_loadu_ps(v + y)),
                                      _mm256_mul_ps(m2, _mm256_loadu_ps(r + y)));
      mu = _mm256_max_ps(mu, gv);
      if (penalised) mp = _mm256_max_ps(mp, _mm256_add_ps(gv, _mm256_loadu_ps(&pen_[static_cast<std::size_t>(y)])));
    }
  }

  __attribute__((target("avx2"))) static float hmax(__m256 m) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
  }

  // E rows by 8-wide stores, left to right: a block's store may run into the next block, which the
  // next store overwrites, or past H into the padding. Blocks inside a row whose neighbours stay
  // are filled 4 or 1 at a time (no wide read-modify-write: it would stall on the fresh stores).
  __attribute__((target("avx2"))) void refresh_e_avx2(Index a, Index b) {
    const float* const va = &v_[static_cast<std::size_t>(a * ld_)];
    const float* const vb = &v_[static_cast<std::size_t>(b * ld_)];
    auto fill_inside = [this](float* d, float value) {
      Index i = 0;
      const __m128 v = _mm_set1_ps(value);
      for (; i + 4 <= k_; i += 4) _mm_storeu_ps(d + i, v);
      for (; i < k_; ++i) d[i] = value;
    };
    for (Index x = 0; x < h_; ++x) {
      float* const ex = &e_[at(x, 0)];
      const Index c = grp(x);
      if (c == a || c == b) {
        for (Index cc = c + 1; cc < g_; ++cc) {
          const __m256 v = _mm256_set1_ps(v_[static_cast<std::size_t>(cc * ld_ + x)]);
          for (Index i = 0; i < k_; i += 8) _mm256_storeu_ps(ex + cc * k_ + i, v);
        }
      } else {
        if (a > c) fill_inside(ex + a * k_, va[x]);
        if (b > c) fill_inside(ex + b * k_, vb[x]);
      }
    }
  }

  // Group maxima first, then the rows of the winning group, then the winning row's columns:
  // the same (first, largest) pair as the portable scan.
  __attribute__((target("avx2"))) bool best_move_avx2(double need, Index& bp, Index& bq) const {
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    float mu = ninf, mp = ninf;
    Index au = -1, ap = -1;
    for (Index a = 0; a + 1 < g_; ++a) {
      __m256 gu = _mm256_set1_ps(ninf), gp = gu;
      for (Index p = a * k_; p < a * k_ + k_; ++p) row_max_avx2(a, p, pen_[static_cast<std::size_t>(p)] == 0, gu, gp);
      const float u = hmax(gu), w = hmax(gp);
      if (u > mu) {
        mu = u;
        au = a;
      }
      if (w > mp) {
        mp = w;
        ap = a;
      }
    }
    const bool aspire = au >= 0 && static_cast<double>(mu) > need;
    if (!aspire && mp == ninf) return false;
    const Index a = aspire ? au : ap;
    const float target = aspire ? mu : mp;
    for (Index p = a * k_; p < a * k_ + k_; ++p) {
      const bool free_row = pen_[static_cast<std::size_t>(p)] == 0;
      if (!aspire && !free_row) continue;
      __m256 ru = _mm256_set1_ps(ninf), rp = ru;
      row_max_avx2(a, p, !aspire, ru, rp);
      if ((aspire ? hmax(ru) : hmax(rp)) != target) continue;
      for (Index y = (a + 1) * k_; y < h_; ++y) {
        if (!aspire && pen_[static_cast<std::size_t>(y)] != 0) continue;
        if (gain_f(a, p, y) == target) {
          bp = p;
          bq = y;
          return true;
        }
      }
    }
    return false;  // not reached: the target is some pair's gain
  }
#endif

  const Matrix<double>& sim_;
  Index h_, g_, k_, ld_ = 0;
  int exponent_ = 0;  // the search sees s · 2^−exponent_
  double score_ = 0;
  std::vector<Index> group_, heads_;
  std::vector<float> sf_, p_, e_, gsum_, v_, own_, pen_;  // sf_: the scaled similarity by head
  std::vector<std::int64_t> tabu_;
};

}  // namespace detail
}  // namespace headalign

#endif  // HEADALIGN_DETAIL_SWAP_SEARCH_HPP
