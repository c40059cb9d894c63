/// @file detail/swap_search.hpp
/// @brief The swap neighbourhood of an equal-size grouping, scanned whole at every step, for
/// group_heads()'s LocalSearch (a tabu search).
///
/// Heads sit in slots, group c owning slots [c·k, c·k + k). With the similarity in slot order
/// P, the group sums \f$ G_{cx} = \sum_{y \in c} P_{xy} \f$, \f$ o_x = G_{c(x)x} \f$ and
/// \f$ V_{cx} = G_{cx} - o_x \f$ (what head x gains by moving to c, before the head it displaces
/// leaves), swapping slot p of group A with slot q of group B changes the objective by
/// \f[ \Delta(p, q) = V_{Bp} + V_{Aq} - 2 P_{pq}. \f]
/// Row p's gains against every later group are then one contiguous expression over q,
/// \f$ V_{c(q)p} + V_{Aq} - 2P_{pq} \f$, whose first term is a lookup of row p of \f$ V^\top \f$
/// by the group of q: one AVX2 permute per 8 slots (per 8 groups), chosen at run time. A swap
/// updates P, \f$ G^\top \f$, V and \f$ V^\top \f$ in O(H·k + H·g). The search works in float on the similarity
/// scaled by a power of two (max |s| in [1/2, 1)); the score it reports is kept exactly, in
/// double, from the unscaled similarity, and group_heads() finishes with a double-precision
/// steepest ascent.
///
/// Define HEADALIGN_NO_SIMD_SWAP_SEARCH to use only the portable scan (same moves, same result).
#ifndef HEADALIGN_DETAIL_SWAP_SEARCH_HPP
#define HEADALIGN_DETAIL_SWAP_SEARCH_HPP

#include "../config.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(HEADALIGN_NO_SIMD_SWAP_SEARCH)
#define HEADALIGN_SIMD_SWAP_SEARCH 1
#include <immintrin.h>
#else
#define HEADALIGN_SIMD_SWAP_SEARCH 0
#endif

#if defined(__GNUC__) || defined(__clang__) || defined(_MSC_VER)
#define HEADALIGN_RESTRICT __restrict
#else
#define HEADALIGN_RESTRICT
#endif

namespace headalign {
namespace detail {

/// Cache-line aligned storage for the search's rows (the timings of unaligned 8-wide loads
/// otherwise depend on where the allocator happens to place them).
template <class T>
struct CacheAligned {
  using value_type = T;
  CacheAligned() = default;
  template <class U>
  CacheAligned(const CacheAligned<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* ptr, std::size_t) noexcept { ::operator delete(ptr, std::align_val_t(64)); }
  template <class U>
  bool operator==(const CacheAligned<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const CacheAligned<U>&) const noexcept { return false; }
};

/// Swap-neighbourhood state of one grouping (slots, P, Gᵀ, V, Vᵀ) with a tabu list by slot.
class SwapSearch {
 public:
  /// @param sim symmetric H × H with a zero diagonal and finite entries; @param num_groups g ≥ 2
  /// dividing H with H/g ≥ 2 (group_heads() checks all of this before)
  SwapSearch(const Matrix<double>& sim, Index num_groups)
      : sim_(sim), h_(sim.rows()), g_(num_groups), k_(sim.rows() / num_groups) {
    ld_ = (h_ + 7 + 15) / 16 * 16;  // room for an 8-wide load that starts at any slot < H; rows on cache lines
    ldt_ = (g_ + 7) / 8 * 8;
    const PowerOfTwo<double> scale = power_of_two(sim.cwiseAbs().maxCoeff());
    exponent_ = scale.exponent;
    unscale_[0] = scale.down[0];
    unscale_[1] = scale.down[1];
    sf_.resize(static_cast<std::size_t>(h_ * h_));
    for (Index x = 0; x < h_; ++x)
      for (Index y = 0; y < h_; ++y)
        sf_[static_cast<std::size_t>(x * h_ + y)] = static_cast<float>(std::ldexp(sim(x, y), -exponent_));
    group_.assign(static_cast<std::size_t>(ld_), 0);  // slots past H: group 0, masked by V = −inf
    for (Index x = 0; x < h_; ++x) group_[static_cast<std::size_t>(x)] = static_cast<std::int32_t>(x / k_);
    p_.assign(static_cast<std::size_t>(h_ * ld_), 0.0f);
    gt_.assign(static_cast<std::size_t>(h_ * ldt_), 0.0f);
    v_.assign(static_cast<std::size_t>(g_ * ld_), -std::numeric_limits<float>::infinity());
    vt_.assign(static_cast<std::size_t>(h_ * ldt_), 0.0f);
    own_.assign(static_cast<std::size_t>(ld_), 0.0f);
    d_.assign(static_cast<std::size_t>(ld_), 0.0f);
    pen_.assign(static_cast<std::size_t>(ld_), 0.0f);
    heads_.resize(static_cast<std::size_t>(h_));
    tabu_.assign(static_cast<std::size_t>(ld_), 0);
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
        gt_[static_cast<std::size_t>(x * ldt_ + c)] = t;
      }
      for (Index x = c * k_; x < c * k_ + k_; ++x)
        for (Index y = x + 1; y < c * k_ + k_; ++y) score_ += sim_(head(x), head(y));
    }
    for (Index x = 0; x < h_; ++x) own_[static_cast<std::size_t>(x)] = gt_[static_cast<std::size_t>(x * ldt_ + grp(x))];
    for (Index x = 0; x < h_; ++x)
      for (Index c = 0; c < g_; ++c) {
        const float v = gt_[static_cast<std::size_t>(x * ldt_ + c)] - own_[static_cast<std::size_t>(x)];
        vt_[static_cast<std::size_t>(x * ldt_ + c)] = v;
        v_[static_cast<std::size_t>(c * ld_ + x)] = v;
      }
    std::fill(tabu_.begin(), tabu_.end(), std::int32_t(0));
  }

  /// Use the portable scan even where AVX2 is available (it gives the same moves).
  bool portable = false;

  /// The objective of the current slots, exact (double, unscaled).
  double score() const { return score_; }
  const std::vector<Index>& heads() const { return heads_; }
  /// The swaps of slot x are tabu until step `until` (exclusive).
  void forbid(Index x, std::int32_t until) { tabu_[static_cast<std::size_t>(x)] = until; }

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
  /// largest gain of all. Ties go to the first pair in row-major slot order, so both scans pick
  /// the same move.
  /// @return false when every pair is tabu and none reaches `need`
  bool best_move(std::int32_t step, double need, Index& bp, Index& bq) {
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    need = need * unscale_[0] * unscale_[1];  // the float gains are in units of the scaled similarity
#if HEADALIGN_SIMD_SWAP_SEARCH
    if (!portable && avx2()) return best_move_avx2(step, need, bp, bq);
#endif
    for (Index y = 0; y < h_; ++y) pen_[static_cast<std::size_t>(y)] = tabu_[static_cast<std::size_t>(y)] > step ? ninf : 0.0f;
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

  /// Swaps the heads of slots p and q (different groups) and updates P, Gᵀ, V, Vᵀ and the score.
  /// V_cx is kept where the scan reads it, for groups c before x's.
  void apply(Index p, Index q) {
    score_ += exact_gain(p, q);
    const Index a = grp(p), b = grp(q), h = h_, k = k_, ld = ld_, ldt = ldt_, g = g_;
    float* const P = p_.data();
    float* const GT = gt_.data();
    float* const V = v_.data();
    float* const VT = vt_.data();
    float* const own = own_.data();
    float* HEADALIGN_RESTRICT const rp = P + p * ld;
    float* HEADALIGN_RESTRICT const rq = P + q * ld;
    float* HEADALIGN_RESTRICT const d = d_.data();
    for (Index x = 0; x < h; ++x) d[x] = rq[x] - rp[x];  // P is symmetric: column q − column p
    std::swap_ranges(rp, rp + h, rq);
    std::swap(rp[p], rp[q]);  // the 2 × 2 block of p and q: both indices swap
    std::swap(rq[p], rq[q]);
    for (Index x = 0; x < h; ++x) {  // columns p and q from the new rows (P stays symmetric)
      P[x * ld + p] = rp[x];
      P[x * ld + q] = rq[x];
    }
    // Gᵀ rows follow the heads; then column a gains d and column b loses it.
    std::swap_ranges(GT + p * ldt, GT + p * ldt + g, GT + q * ldt);
    std::swap(d[p], d[q]);
    std::swap(heads_[static_cast<std::size_t>(p)], heads_[static_cast<std::size_t>(q)]);
    std::swap(tabu_[static_cast<std::size_t>(p)], tabu_[static_cast<std::size_t>(q)]);
#if HEADALIGN_SIMD_SWAP_SEARCH
    if (!portable && g <= 8 && avx2()) {
      update_avx2(a, b);
    } else
#endif
    {
      for (Index x = 0; x < h; ++x) {
        GT[x * ldt + a] += d[x];
        GT[x * ldt + b] -= d[x];
      }
      for (Index i = 0; i < k; ++i) {
        own[a * k + i] = GT[(a * k + i) * ldt + a];
        own[b * k + i] = GT[(b * k + i) * ldt + b];
      }
      // Vᵀ = Gᵀ − own changed in columns a, b and in the rows of a's and b's slots.
      for (Index x = 0; x < h; ++x) {
        VT[x * ldt + a] = GT[x * ldt + a] - own[x];
        VT[x * ldt + b] = GT[x * ldt + b] - own[x];
      }
      for (Index c : {a, b})
        for (Index x = c * k; x < c * k + k; ++x)
          for (Index cc = 0; cc < g; ++cc) VT[x * ldt + cc] = GT[x * ldt + cc] - own[x];
    }
    // V (V_cx = Vᵀ_xc) where the scan reads it: rows a and b right of their groups, and the
    // columns of a's and b's slots above their groups.
    for (Index c : {a, b}) {
      float* HEADALIGN_RESTRICT const vc = V + c * ld;
      for (Index x = (c + 1) * k; x < h; ++x) vc[x] = VT[x * ldt + c];
      for (Index x = c * k; x < c * k + k; ++x)
        for (Index cc = 0; cc < c; ++cc) V[cc * ld + x] = VT[x * ldt + cc];
    }
  }

 private:
  std::size_t at(Index x, Index y) const { return static_cast<std::size_t>(x * ld_ + y); }
  Index grp(Index x) const { return group_[static_cast<std::size_t>(x)]; }
  Index head(Index x) const { return heads_[static_cast<std::size_t>(x)]; }
  // Δ(p, y) in float, p in group a: (Vᵀ_{p,c(y)} + V_{ay}) + (−2P_py). −2P is exact, so a fused
  // multiply–add gives the same float as the two roundings: both scans agree bit for bit.
  float gain_f(Index a, Index p, Index y) const {
    const float t = vt_[static_cast<std::size_t>(p * ldt_ + grp(y))] + v_[static_cast<std::size_t>(a * ld_ + y)];
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

  // Δ(p, y … y + 7) for p in group a (lanes past H read V = −inf). The first term picks
  // Vᵀ_{p, c(y)} from row p of Vᵀ by permutes, 8 groups per permute (blended above 8 groups).
  __attribute__((target("avx2"))) __m256 gains8_avx2(Index a, Index p, Index y) const {
    const float* const vt = &vt_[static_cast<std::size_t>(p * ldt_)];
    const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&group_[static_cast<std::size_t>(y)]));
    __m256 t = _mm256_permutevar8x32_ps(_mm256_loadu_ps(vt), idx);
    for (Index c = 8; c < g_; c += 8) {
      const __m256i here = _mm256_cmpeq_epi32(_mm256_srli_epi32(idx, 3), _mm256_set1_epi32(static_cast<int>(c / 8)));
      t = _mm256_blendv_ps(t, _mm256_permutevar8x32_ps(_mm256_loadu_ps(vt + c), idx), _mm256_castsi256_ps(here));  // idx mod 8
    }
    return _mm256_add_ps(_mm256_add_ps(t, _mm256_loadu_ps(&v_[static_cast<std::size_t>(a * ld_ + y)])),
                         _mm256_mul_ps(_mm256_set1_ps(-2.0f), _mm256_loadu_ps(&p_[at(p, y)])));
  }

  // Row p's gains against every later group: their maximum, and with penalties.
  __attribute__((target("avx2"))) void row_max_avx2(Index a, Index p, bool penalised, __m256& mu, __m256& mp) const {
    for (Index y = (a + 1) * k_; y < h_; y += 8) {
      const __m256 gv = gains8_avx2(a, p, y);
      mu = _mm256_max_ps(mu, gv);
      if (penalised) mp = _mm256_max_ps(mp, _mm256_add_ps(gv, _mm256_loadu_ps(&pen_[static_cast<std::size_t>(y)])));
    }
  }

  // Gᵀ += d ⊗ (e_a − e_b), own and Vᵀ = Gᵀ − own: one register per row (at most 8 groups).
  __attribute__((target("avx2"))) void update_avx2(Index a, Index b) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 plus = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(lane, _mm256_set1_epi32(static_cast<int>(a)))), one);
    const __m256 minus = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(lane, _mm256_set1_epi32(static_cast<int>(b)))), one);
    const Index h = h_, k = k_;
    float* HEADALIGN_RESTRICT const gt = gt_.data();  // ldt_ == 8 here
    float* HEADALIGN_RESTRICT const vt = vt_.data();
    float* HEADALIGN_RESTRICT const own = own_.data();
    const float* HEADALIGN_RESTRICT const d = d_.data();
    // own of a's and b's slots first (the lane each row gains or loses d in), then one pass:
    // Gᵀ + d in lane a and Gᵀ − d in lane b (d · 1 and d · 0 are exact, so the lanes equal own),
    // and Vᵀ = Gᵀ − own.
    for (Index i = 0; i < k; ++i) {
      own[a * k + i] = gt[8 * (a * k + i) + a] + d[a * k + i];
      own[b * k + i] = gt[8 * (b * k + i) + b] - d[b * k + i];
    }
    for (Index x = 0; x < h; ++x) {
      const __m256 dx = _mm256_broadcast_ss(d + x);
      const __m256 row = _mm256_sub_ps(_mm256_add_ps(_mm256_loadu_ps(gt + 8 * x), _mm256_mul_ps(dx, plus)), _mm256_mul_ps(dx, minus));
      _mm256_storeu_ps(gt + 8 * x, row);
      _mm256_storeu_ps(vt + 8 * x, _mm256_sub_ps(row, _mm256_broadcast_ss(own + x)));
    }
  }

  // All rows of group a at once (g ≤ 8): each 8 slots' V, penalties and groups are loaded once
  // for the k rows; a tabu row's penalised gains get −inf from its own penalty.
  __attribute__((target("avx2"))) void group_max_avx2(Index a, __m256& mu, __m256& mp) const {
    const float* const v = &v_[static_cast<std::size_t>(a * ld_)];
    const std::int32_t* const gi = group_.data();
    const __m256 m2 = _mm256_set1_ps(-2.0f);
    for (Index y = (a + 1) * k_; y < h_; y += 8) {
      const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gi + y));
      const __m256 vy = _mm256_loadu_ps(v + y), py = _mm256_loadu_ps(&pen_[static_cast<std::size_t>(y)]);
      const float* r = &p_[at(a * k_, y)];
      const float* vt = &vt_[static_cast<std::size_t>(a * k_ * ldt_)];
      for (Index p = a * k_; p < a * k_ + k_; ++p, r += ld_, vt += 8) {
        const __m256 t = _mm256_permutevar8x32_ps(_mm256_loadu_ps(vt), idx);
        const __m256 gv = _mm256_add_ps(_mm256_add_ps(t, vy), _mm256_mul_ps(m2, _mm256_loadu_ps(r)));
        mu = _mm256_max_ps(mu, gv);
        mp = _mm256_max_ps(mp, _mm256_add_ps(_mm256_add_ps(gv, py), _mm256_broadcast_ss(&pen_[static_cast<std::size_t>(p)])));
      }
    }
  }

  __attribute__((target("avx2"))) static float hmax(__m256 m) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
  }

  // Group maxima first, then the rows of the winning group, then the winning row's columns:
  // the same (first, largest) pair as the portable scan.
  __attribute__((target("avx2"))) bool best_move_avx2(std::int32_t step, double need, Index& bp, Index& bq) {
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    const __m256i now = _mm256_set1_epi32(step);
    const __m256 minus_inf = _mm256_set1_ps(ninf);
    for (Index y = 0; y < h_; y += 8) {  // pen_ = −inf where tabu_ > step (tabu_ is 0 past H)
      const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&tabu_[static_cast<std::size_t>(y)]));
      _mm256_storeu_ps(&pen_[static_cast<std::size_t>(y)], _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, now)), minus_inf));
    }
    float mu = ninf, mp = ninf;
    Index au = -1, ap = -1;
    for (Index a = 0; a + 1 < g_; ++a) {
      __m256 gu = _mm256_set1_ps(ninf), gp = gu;
      if (g_ <= 8) {
        group_max_avx2(a, gu, gp);
      } else {
        for (Index p = a * k_; p < a * k_ + k_; ++p) row_max_avx2(a, p, pen_[static_cast<std::size_t>(p)] == 0, gu, gp);
      }
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
      if (!aspire && pen_[static_cast<std::size_t>(p)] != 0) continue;
      const Index y = row_find_avx2(a, p, !aspire, target);
      if (y >= 0) {
        bp = p;
        bq = y;
        return true;
      }
    }
    return false;  // not reached: the target is some pair's gain
  }

  // The first slot of row p (later groups) whose gain, penalised or not, equals target; −1 if none.
  __attribute__((target("avx2"))) Index row_find_avx2(Index a, Index p, bool penalised, float target) const {
    const __m256 want = _mm256_set1_ps(target);
    for (Index y = (a + 1) * k_; y < h_; y += 8) {
      __m256 gv = gains8_avx2(a, p, y);
      if (penalised) gv = _mm256_add_ps(gv, _mm256_loadu_ps(&pen_[static_cast<std::size_t>(y)]));
      const int hit = _mm256_movemask_ps(_mm256_cmp_ps(gv, want, _CMP_EQ_OQ));
      if (hit != 0) return y + __builtin_ctz(static_cast<unsigned>(hit));
    }
    return -1;
  }
#endif

  const Matrix<double>& sim_;
  Index h_, g_, k_, ld_ = 0, ldt_ = 0;
  int exponent_ = 0;            // the search sees s · 2^−exponent_
  double unscale_[2] = {1, 1};  // 2^−exponent_ as two finite factors (power_of_two())
  double score_ = 0;
  std::vector<Index> heads_;
  std::vector<std::int32_t, CacheAligned<std::int32_t>> group_;  // group of each slot (0 past H)
  std::vector<float> sf_;                                        // the scaled similarity, by head
  std::vector<float, CacheAligned<float>> p_, gt_, v_, vt_, own_, pen_, d_;  // gt_: Gᵀ
  std::vector<std::int32_t, CacheAligned<std::int32_t>> tabu_;   // by slot, 0 past H
};

}  // namespace detail
}  // namespace headalign

#endif  // HEADALIGN_DETAIL_SWAP_SEARCH_HPP
