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
/// updates P (rows and columns p, q), G (rows A and B, columns p and q) and o (the slots of A and
/// B) in O(H + g + k); each scan first derives V = G − o and, for the AVX2 scan, \f$ V^\top \f$
/// (8 × 8 transposes), in O(H·g). The search works in float on the similarity
/// scaled by a power of two (max |s| in [1/2, 1)); the score it reports is kept exactly, in
/// double, from the unscaled similarity, and group_heads() finishes with a double-precision
/// steepest ascent.
///
/// Define HEADALIGN_NO_SIMD_SWAP_SEARCH to use only the portable scan (same moves, same result).
#ifndef HEADALIGN_DETAIL_SWAP_SEARCH_HPP
#define HEADALIGN_DETAIL_SWAP_SEARCH_HPP

#include "../config.hpp"
#include "cpu.hpp"
#include "numeric.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#if HEADALIGN_X86_DISPATCH && !defined(HEADALIGN_NO_SIMD_SWAP_SEARCH)
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
  bool operator==(const CacheAligned<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const CacheAligned<U>&) const noexcept {
    return false;
  }
};

/// Swap-neighbourhood state of one grouping (slots, P, G, V) with a tabu list by slot.
class SwapSearch {
 public:
  /// @param sim exactly symmetric H × H with a zero diagonal and finite entries; @param num_groups g ≥ 2
  /// dividing H with H/g ≥ 2 (group_heads() checks all of this before)
  SwapSearch(const Matrix<double>& sim, Index num_groups)
      : sim_(sim), h_(sim.rows()), g_(num_groups), k_(sim.rows() / num_groups) {
    ld_ =
        (h_ + 7 + 15) / 16 * 16;  // room for an 8-wide load that starts at any slot < H; rows on cache lines
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
    g_rows_.assign(static_cast<std::size_t>(ldt_ * ld_), 0.0f);  // rows past g: 0
    v_.assign(static_cast<std::size_t>(ldt_ * ld_), 0.0f);
    for (Index c = 0; c < ldt_; ++c)  // past H: −inf, where the scan's 8-wide loads end
      std::fill(v_.begin() + c * ld_ + h_, v_.begin() + (c + 1) * ld_,
                -std::numeric_limits<float>::infinity());
    vt_.assign(static_cast<std::size_t>(ld_ * ldt_), 0.0f);
    own_.assign(static_cast<std::size_t>(ld_),
                std::numeric_limits<float>::infinity());  // V = G − own = −inf past H
    d_.assign(static_cast<std::size_t>(ld_), 0.0f);
    pen_.assign(static_cast<std::size_t>(ld_), 0.0f);
    row_pen_.assign(static_cast<std::size_t>(8 * h_), 0.0f);
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
        g_rows_[at(c, x)] = t;
      }
      for (Index x = c * k_; x < c * k_ + k_; ++x)
        for (Index y = x + 1; y < c * k_ + k_; ++y) score_ += sim_(head(x), head(y));
    }
    for (Index x = 0; x < h_; ++x) own_[static_cast<std::size_t>(x)] = g_rows_[at(grp(x), x)];
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
    const Index a = grp(p), b = grp(q);
    const double* const sp = &sim_(0, head(p));  // s is symmetric: columns hp and hq
    const double* const sq = &sim_(0, head(q));
    const Index* const hs = heads_.data();
    double gain = 0;
    for (Index y = b * k_; y < b * k_ + k_; ++y)
      if (y != q) gain += sp[hs[y]] - sq[hs[y]];
    for (Index y = a * k_; y < a * k_ + k_; ++y)
      if (y != p) gain += sq[hs[y]] - sp[hs[y]];
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
    for (Index c = 0; c < g_; ++c)
      for (Index x = 0; x < h_; ++x) v_[at(c, x)] = g_rows_[at(c, x)] - own_[static_cast<std::size_t>(x)];
    for (Index y = 0; y < h_; ++y)
      pen_[static_cast<std::size_t>(y)] = tabu_[static_cast<std::size_t>(y)] > step ? ninf : 0.0f;
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

  /// Swaps the heads of slots p and q (different groups) and updates P, G, own and the score
  /// (best_move() derives V = G − own from them).
  void apply(Index p, Index q) {
    score_ += exact_gain(p, q);
    const Index a = grp(p), b = grp(q), h = h_, k = k_, ld = ld_, g = g_;
    float* HEADALIGN_RESTRICT const rp = p_.data() + p * ld;
    float* HEADALIGN_RESTRICT const rq = p_.data() + q * ld;
    float* HEADALIGN_RESTRICT const d = d_.data();
    float* const G = g_rows_.data();
    float* HEADALIGN_RESTRICT const ga = G + a * ld;
    float* HEADALIGN_RESTRICT const gb = G + b * ld;
#if HEADALIGN_SIMD_SWAP_SEARCH
    const bool simd = !portable && avx2();
    if (simd)
      swap_avx2(p, q);
    else
#endif
    {
      for (Index x = 0; x < h; ++x) d[x] = rq[x] - rp[x];  // P is symmetric: column q − column p
      for (Index x = 0; x < h; ++x) std::swap(rp[x], rq[x]);
      std::swap(rp[p], rp[q]);  // the 2 × 2 block of p and q: both indices swap
      std::swap(rq[p], rq[q]);
      set_columns(p, q);
    }
    // G's columns p and q follow the heads (and so does d); then row a gains d and row b loses it.
    for (Index c = 0; c < g; ++c) std::swap(G[c * ld + p], G[c * ld + q]);
    std::swap(d[p], d[q]);
    std::swap(heads_[static_cast<std::size_t>(p)], heads_[static_cast<std::size_t>(q)]);
    std::swap(tabu_[static_cast<std::size_t>(p)], tabu_[static_cast<std::size_t>(q)]);
#if HEADALIGN_SIMD_SWAP_SEARCH
    if (simd)
      add_avx2(ga, gb, d);
    else
#endif
    {
      for (Index x = 0; x < h; ++x) {
        ga[x] += d[x];
        gb[x] -= d[x];
      }
    }
    for (Index i = 0; i < k; ++i) {
      own_[static_cast<std::size_t>(a * k + i)] = ga[a * k + i];
      own_[static_cast<std::size_t>(b * k + i)] = gb[b * k + i];
    }
  }

 private:
  std::size_t at(Index x, Index y) const { return static_cast<std::size_t>(x * ld_ + y); }
  Index grp(Index x) const { return group_[static_cast<std::size_t>(x)]; }
  Index head(Index x) const { return heads_[static_cast<std::size_t>(x)]; }

  // Columns p and q of P from rows p and q (P stays symmetric); unrolled by four.
  void set_columns(Index p, Index q) {
    const Index h = h_, ld = ld_;
    const float* const rp = p_.data() + p * ld;  // not restrict: the columns cross these rows
    const float* const rq = p_.data() + q * ld;
    float* col = p_.data();
    Index x = 0;
    for (; x + 4 <= h; x += 4, col += 4 * ld) {
      col[p] = rp[x];
      col[q] = rq[x];
      col[ld + p] = rp[x + 1];
      col[ld + q] = rq[x + 1];
      col[2 * ld + p] = rp[x + 2];
      col[2 * ld + q] = rq[x + 2];
      col[3 * ld + p] = rp[x + 3];
      col[3 * ld + q] = rq[x + 3];
    }
    for (; x < h; ++x, col += ld) {
      col[p] = rp[x];
      col[q] = rq[x];
    }
  }

  // Δ(p, y) in float, p in group a: (V_{c(y)p} + V_{ay}) + (−2P_py). −2P is exact, so a fused
  // multiply–add gives the same float as the two roundings: both scans agree bit for bit.
  float gain_f(Index a, Index p, Index y) const {
    const float t = v_[at(grp(y), p)] + v_[at(a, y)];
    return t + -2.0f * p_[at(p, y)];
  }

#if HEADALIGN_SIMD_SWAP_SEARCH
  static bool avx2() { return cpu_has_avx2_fma(); }

  // The AVX2 form of apply()'s first part: d = row q − row p and rows p and q swap; then each
  // new row is stored as a column too, 8 lanes from a register (P stays symmetric), which also
  // writes the 2 × 2 block of p and q, set last.
  __attribute__((target("avx2,fma"))) void swap_avx2(Index p, Index q) {
    const Index h = h_, ld = ld_;
    float* const P = p_.data();
    float* HEADALIGN_RESTRICT const rp = P + p * ld;
    float* HEADALIGN_RESTRICT const rq = P + q * ld;
    float* HEADALIGN_RESTRICT const d = d_.data();
    const float pq = rp[q];
    for (Index x = 0; x < h; x += 8) {
      const __m256 u = _mm256_loadu_ps(rp + x), w = _mm256_loadu_ps(rq + x);
      _mm256_storeu_ps(d + x, _mm256_sub_ps(w, u));
      _mm256_storeu_ps(rp + x, w);
      _mm256_storeu_ps(rq + x, u);
    }
    Index x = 0;
    for (; x + 8 <= h; x += 8) {  // P_xp = row p's entry x, P_xq = row q's
      store_lanes(P + x * ld + p, ld, _mm256_loadu_ps(rp + x));
      store_lanes(P + x * ld + q, ld, _mm256_loadu_ps(rq + x));
    }
    for (; x < h; ++x) {
      P[x * ld + p] = rp[x];
      P[x * ld + q] = rq[x];
    }
    rp[p] = 0;  // the heads swapped places: P_pq = P_qp is unchanged, the diagonal 0
    rq[q] = 0;
    rp[q] = pq;
    rq[p] = pq;
  }

  // The 8 lanes of w to dst[0], dst[ld], …, dst[7·ld].
  __attribute__((target("avx2,fma"), always_inline)) static inline void store_lanes(float* dst, Index ld,
                                                                                    __m256 w) {
    const __m128 lo = _mm256_castps256_ps128(w), hi = _mm256_extractf128_ps(w, 1);
    _mm_store_ss(dst, lo);
    lane_to(dst + ld, _mm_extract_ps(lo, 1));
    lane_to(dst + 2 * ld, _mm_extract_ps(lo, 2));
    lane_to(dst + 3 * ld, _mm_extract_ps(lo, 3));
    _mm_store_ss(dst + 4 * ld, hi);
    lane_to(dst + 5 * ld, _mm_extract_ps(hi, 1));
    lane_to(dst + 6 * ld, _mm_extract_ps(hi, 2));
    lane_to(dst + 7 * ld, _mm_extract_ps(hi, 3));
  }
  static void lane_to(float* dst, int bits) { std::memcpy(dst, &bits, sizeof bits); }

  // G_a += d, G_b −= d.
  __attribute__((target("avx2,fma"))) void add_avx2(float* HEADALIGN_RESTRICT ga,
                                                    float* HEADALIGN_RESTRICT gb,
                                                    const float* HEADALIGN_RESTRICT d) const {
    for (Index x = 0; x < h_; x += 8) {
      const __m256 dx = _mm256_loadu_ps(d + x);
      _mm256_storeu_ps(ga + x, _mm256_add_ps(_mm256_loadu_ps(ga + x), dx));
      _mm256_storeu_ps(gb + x, _mm256_sub_ps(_mm256_loadu_ps(gb + x), dx));
    }
  }

  // V = G − own and its transpose Vᵀ, 8 × 8 blocks (the scan looks up V_{c(y)p} in row p of Vᵀ).
  __attribute__((target("avx2,fma"))) void refresh_avx2() {
    const Index ld = ld_, ldt = ldt_;
    for (Index x0 = 0; x0 < h_; x0 += 8) {
      const __m256 own = _mm256_loadu_ps(&own_[static_cast<std::size_t>(x0)]);
      for (Index c0 = 0; c0 < ldt; c0 += 8) {
        const float* const src = &g_rows_[at(c0, x0)];
        float* const v = &v_[at(c0, x0)];
        __m256 r[8], s[8];
        for (int i = 0; i < 8; ++i) {
          r[i] = _mm256_sub_ps(_mm256_loadu_ps(src + i * ld), own);
          _mm256_storeu_ps(v + i * ld, r[i]);
        }
        for (int i = 0; i < 8; i += 2) {
          s[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
          s[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
          r[i] = _mm256_shuffle_ps(s[i], s[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
          r[i + 1] = _mm256_shuffle_ps(s[i], s[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
          r[i + 2] = _mm256_shuffle_ps(s[i + 1], s[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
          r[i + 3] = _mm256_shuffle_ps(s[i + 1], s[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        float* const dst = &vt_[static_cast<std::size_t>(x0 * ldt + c0)];
        for (int i = 0; i < 4; ++i) {
          _mm256_storeu_ps(dst + i * ldt, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
          _mm256_storeu_ps(dst + (i + 4) * ldt, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
        }
      }
    }
  }

  // Δ(p, y … y + 7) for p in group a (lanes past H read V = −inf), given the first 8 lanes of row
  // p of Vᵀ: the first term picks V_{c(y)p} by permutes, 8 groups per permute (blended above 8).
  __attribute__((target("avx2,fma"))) __m256 gains8_avx2(Index a, Index p, Index y, __m256 vt0) const {
    const float* const vt = &vt_[static_cast<std::size_t>(p * ldt_)];
    const __m256i idx =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&group_[static_cast<std::size_t>(y)]));
    __m256 t = _mm256_permutevar8x32_ps(vt0, idx);
    for (Index c = 8; c < g_; c += 8) {
      const __m256i here =
          _mm256_cmpeq_epi32(_mm256_srli_epi32(idx, 3), _mm256_set1_epi32(static_cast<int>(c / 8)));
      t = _mm256_blendv_ps(t, _mm256_permutevar8x32_ps(_mm256_loadu_ps(vt + c), idx),
                           _mm256_castsi256_ps(here));  // idx mod 8
    }
    return _mm256_fmadd_ps(_mm256_set1_ps(-2.0f), _mm256_loadu_ps(&p_[at(p, y)]),
                           _mm256_add_ps(t, _mm256_loadu_ps(&v_[at(a, y)])));
  }

  // Rows p0 … p0 + R − 1 (R ≤ 4) of group a (g ≤ 8: a row of Vᵀ is one register), against
  // every later group: the gains (Vᵀ_{p,c(y)} + V_ay) − 2P_py, the last step with one rounding
  // (−2P is exact, so the same float as the portable scan), into their maximum mu, and with the
  // penalties of the slots y into each row's maximum, which its own penalty then clears for a
  // tabu row before it joins mp.
  template <int R>
  __attribute__((target("avx2,fma"), always_inline)) inline void rows_max8_avx2(Index a, Index p0, __m256& mu,
                                                                                __m256& mp) {
    const Index ld = ld_, h = h_;
    const float* const v = &v_[at(a, 0)];
    const float* const pen = pen_.data();
    const std::int32_t* const gi = group_.data();
    const float* const r0 = &p_[at(p0, 0)];
    const float* const vt = &vt_[static_cast<std::size_t>(p0 * 8)];
    const __m256 m2 = _mm256_set1_ps(-2.0f), ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    const __m256 t0 = _mm256_loadu_ps(vt), t1 = R > 1 ? _mm256_loadu_ps(vt + 8) : t0;
    const __m256 t2 = R > 2 ? _mm256_loadu_ps(vt + 16) : t0, t3 = R > 3 ? _mm256_loadu_ps(vt + 24) : t0;
    __m256 u = mu, b0 = ninf, b1 = ninf, b2 = ninf, b3 = ninf;
    for (Index y = (a + 1) * k_; y < h; y += 8) {
      const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gi + y));
      const __m256 vy = _mm256_loadu_ps(v + y), py = _mm256_loadu_ps(pen + y);
      const float* const r = r0 + y;
      __m256 gv =
          _mm256_fmadd_ps(m2, _mm256_loadu_ps(r), _mm256_add_ps(_mm256_permutevar8x32_ps(t0, idx), vy));
      u = _mm256_max_ps(u, gv);
      b0 = _mm256_max_ps(b0, _mm256_add_ps(gv, py));
      if (R > 1) {
        gv = _mm256_fmadd_ps(m2, _mm256_loadu_ps(r + ld),
                             _mm256_add_ps(_mm256_permutevar8x32_ps(t1, idx), vy));
        u = _mm256_max_ps(u, gv);
        b1 = _mm256_max_ps(b1, _mm256_add_ps(gv, py));
      }
      if (R > 2) {
        gv = _mm256_fmadd_ps(m2, _mm256_loadu_ps(r + 2 * ld),
                             _mm256_add_ps(_mm256_permutevar8x32_ps(t2, idx), vy));
        u = _mm256_max_ps(u, gv);
        b2 = _mm256_max_ps(b2, _mm256_add_ps(gv, py));
      }
      if (R > 3) {
        gv = _mm256_fmadd_ps(m2, _mm256_loadu_ps(r + 3 * ld),
                             _mm256_add_ps(_mm256_permutevar8x32_ps(t3, idx), vy));
        u = _mm256_max_ps(u, gv);
        b3 = _mm256_max_ps(b3, _mm256_add_ps(gv, py));
      }
    }
    mu = u;
    // Each row's penalised maxima, kept for find_avx2().
    float* const rows = &row_pen_[static_cast<std::size_t>(8 * p0)];
    b0 = _mm256_add_ps(b0, _mm256_broadcast_ss(pen + p0));
    _mm256_store_ps(rows, b0);
    __m256 w = _mm256_max_ps(mp, b0);
    if (R > 1) {
      b1 = _mm256_add_ps(b1, _mm256_broadcast_ss(pen + p0 + 1));
      _mm256_store_ps(rows + 8, b1);
      w = _mm256_max_ps(w, b1);
    }
    if (R > 2) {
      b2 = _mm256_add_ps(b2, _mm256_broadcast_ss(pen + p0 + 2));
      _mm256_store_ps(rows + 16, b2);
      w = _mm256_max_ps(w, b2);
    }
    if (R > 3) {
      b3 = _mm256_add_ps(b3, _mm256_broadcast_ss(pen + p0 + 3));
      _mm256_store_ps(rows + 24, b3);
      w = _mm256_max_ps(w, b3);
    }
    mp = w;
  }

  // Every group's maxima (g ≤ 8; rows up to four at a time), kept lane by lane with the first
  // group that reached them.
  __attribute__((target("avx2,fma"))) void scan8_avx2(__m256& bu, __m256i& fu, __m256& bp, __m256i& fp) {
    const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    __m256 best_u = ninf, best_p = ninf;
    __m256i from_u = _mm256_setzero_si256(), from_p = from_u;
    const Index k = k_;
    for (Index a = 0, first = 0; a + 1 < g_; ++a, first += k) {
      __m256 u = ninf, w = ninf;
      Index p = first;
      for (; p + 4 <= first + k; p += 4) rows_max8_avx2<4>(a, p, u, w);
      switch (first + k - p) {
        case 3:
          rows_max8_avx2<3>(a, p, u, w);
          break;
        case 2:
          rows_max8_avx2<2>(a, p, u, w);
          break;
        case 1:
          rows_max8_avx2<1>(a, p, u, w);
          break;
        default:
          break;
      }
      keep_max(u, a, best_u, from_u);
      keep_max(w, a, best_p, from_p);
    }
    bu = best_u;
    fu = from_u;
    bp = best_p;
    fp = from_p;
  }

  // The same for any g (blended permutes).
  __attribute__((target("avx2,fma"))) void row_max_avx2(Index a, Index p, __m256& mu, __m256& mp) {
    const __m256 vt0 = _mm256_loadu_ps(&vt_[static_cast<std::size_t>(p * ldt_)]);
    __m256 row = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (Index y = (a + 1) * k_; y < h_; y += 8) {
      const __m256 gv = gains8_avx2(a, p, y, vt0);
      mu = _mm256_max_ps(mu, gv);
      row = _mm256_max_ps(row, _mm256_add_ps(gv, _mm256_loadu_ps(&pen_[static_cast<std::size_t>(y)])));
    }
    row = _mm256_add_ps(row, _mm256_broadcast_ss(&pen_[static_cast<std::size_t>(p)]));
    _mm256_store_ps(&row_pen_[static_cast<std::size_t>(8 * p)], row);
    mp = _mm256_max_ps(mp, row);
  }

  // Lane by lane, the largest value so far and the first group it came from.
  __attribute__((target("avx2,fma"))) static void keep_max(__m256 value, Index group, __m256& best,
                                                           __m256i& from) {
    const __m256 more = _mm256_cmp_ps(value, best, _CMP_GT_OQ);
    best = _mm256_max_ps(best, value);
    from = _mm256_castps_si256(_mm256_blendv_ps(
        _mm256_castsi256_ps(from), _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(group))), more));
  }

  // The largest lane of `best` and the first group that reached it (−1 when all are −inf).
  __attribute__((target("avx2,fma"))) static float lane_max(__m256 best, __m256i from, Index& group) {
    __m256 m = _mm256_max_ps(best, _mm256_permute2f128_ps(best, best, 1));  // every lane: the maximum
    m = _mm256_max_ps(m, _mm256_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm256_max_ps(m, _mm256_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    // The smallest group among the lanes that hold it (others: INT_MAX), without leaving registers.
    __m256i ids = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(_mm256_set1_epi32(std::numeric_limits<std::int32_t>::max())),
                         _mm256_castsi256_ps(from), _mm256_cmp_ps(best, m, _CMP_EQ_OQ)));
    ids = _mm256_min_epi32(ids, _mm256_permute2x128_si256(ids, ids, 1));
    ids = _mm256_min_epi32(ids, _mm256_shuffle_epi32(ids, _MM_SHUFFLE(1, 0, 3, 2)));
    ids = _mm256_min_epi32(ids, _mm256_shuffle_epi32(ids, _MM_SHUFFLE(2, 3, 0, 1)));
    const float top = _mm256_cvtss_f32(m);
    group = top == -std::numeric_limits<float>::infinity() ? Index(-1) : Index(_mm256_cvtsi256_si32(ids));
    return top;
  }

  // Group maxima first (lane by lane), then the rows of the winning group, then the winning
  // row's columns: the same (first, largest) pair as the portable scan.
  __attribute__((target("avx2,fma"))) bool best_move_avx2(std::int32_t step, double need, Index& bp,
                                                          Index& bq) {
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    const __m256i now = _mm256_set1_epi32(step);
    const __m256 minus_inf = _mm256_set1_ps(ninf);
    for (Index y = 0; y < h_; y += 8) {  // pen_ = −inf where tabu_ > step (tabu_ is 0 past H)
      const __m256i t =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&tabu_[static_cast<std::size_t>(y)]));
      _mm256_storeu_ps(&pen_[static_cast<std::size_t>(y)],
                       _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, now)), minus_inf));
    }
    refresh_avx2();
    __m256 bu = minus_inf, bpen = minus_inf;
    __m256i fu = _mm256_setzero_si256(), fpen = fu;
    if (g_ <= 8) {
      scan8_avx2(bu, fu, bpen, fpen);
    } else {
      for (Index a = 0; a + 1 < g_; ++a) {
        __m256 gu = minus_inf, gp = minus_inf;
        for (Index p = a * k_; p < a * k_ + k_; ++p) row_max_avx2(a, p, gu, gp);
        keep_max(gu, a, bu, fu);
        keep_max(gp, a, bpen, fpen);
      }
    }
    Index au = -1, ap = -1;
    const float mu = lane_max(bu, fu, au);
    const float mp = lane_max(bpen, fpen, ap);
    const bool aspire = au >= 0 && static_cast<double>(mu) > need;
    if (!aspire && ap < 0) return false;
    if (!aspire) return find_avx2(ap, mp, bp, bq);
    for (Index p = au * k_; p < au * k_ + k_; ++p) {
      const Index y = row_find_avx2(au, p, false, mu);
      if (y >= 0) {
        bp = p;
        bq = y;
        return true;
      }
    }
    return false;  // not reached: the target is some pair's gain
  }

  // The first admissible pair (row-major) of group a's rows with penalised gain `target`: the
  // first row whose kept maxima reach it, then its first slot, without branching on the data.
  __attribute__((target("avx2,fma"))) bool find_avx2(Index a, float target, Index& bp, Index& bq) const {
    const __m256 want = _mm256_set1_ps(target);
    const Index none = std::numeric_limits<Index>::max(), start = (a + 1) * k_;
    Index p = none;
    for (Index x = start - 1; x >= a * k_; --x) {  // last to first: the first row with a hit stays
      const int hit = _mm256_movemask_ps(
          _mm256_cmp_ps(_mm256_load_ps(&row_pen_[static_cast<std::size_t>(8 * x)]), want, _CMP_EQ_OQ));
      p = hit != 0 ? x : p;
    }
    if (p == none) return false;  // not reached: the target is some pair's gain
    const Index q = row_find_avx2(a, p, true, target);
    if (q < 0) return false;  // not reached
    bp = p;
    bq = q;
    return true;
  }

  // The first slot of row p (later groups) whose gain, penalised or not, equals target; −1 if
  // none. Every 8 slots are compared, without branching on the data.
  __attribute__((target("avx2,fma"))) Index row_find_avx2(Index a, Index p, bool penalised,
                                                          float target) const {
    const __m256 want = _mm256_set1_ps(target),
                 vt0 = _mm256_loadu_ps(&vt_[static_cast<std::size_t>(p * ldt_)]);
    const Index none = std::numeric_limits<Index>::max();
    Index first = none;
    for (Index y = (a + 1) * k_; y < h_; y += 8) {
      __m256 gv = gains8_avx2(a, p, y, vt0);
      if (penalised) gv = _mm256_add_ps(gv, _mm256_loadu_ps(&pen_[static_cast<std::size_t>(y)]));
      const unsigned hit = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(gv, want, _CMP_EQ_OQ)));
      first = std::min(first, hit != 0 ? y + __builtin_ctz(hit | 0x100u) : none);
    }
    return first == none ? Index(-1) : first;
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
  // P (H × ld), G and V (ldt × ld: rows past g unused), Vᵀ (ld × ldt, for the AVX2 scan)
  std::vector<float, CacheAligned<float>> p_, g_rows_, v_, vt_, own_, pen_, d_;
  std::vector<float, CacheAligned<float>> row_pen_;  // H × 8: each row's penalised gain maxima, by lane
  std::vector<std::int32_t, CacheAligned<std::int32_t>> tabu_;  // by slot, 0 past H
};

}  // namespace detail
}  // namespace headalign

#endif  // HEADALIGN_DETAIL_SWAP_SEARCH_HPP
