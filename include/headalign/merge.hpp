/// @file merge.hpp
/// @brief Merging the KV heads of a layer into grouped-query attention by (weighted) mean.
///
/// Keys and values are linear in the projection weights: if KV head j of a group computes
/// \f$ K_j = x W_{k,j}^\top + b_{k,j} \f$, the head with the group's mean weights and bias
/// computes exactly \f$ \frac1k \sum_j K_j \f$. So mean-pooling weights (Sec. 3.5 of
/// arXiv 2412.20677) replaces every head's keys by the group's mean shape, and the error this
/// makes on the calibration tokens, \f$ \sum_j \mathbb{E}\|K_j - \bar K\|^2 \f$, is a function of
/// the Gram blocks alone (merge_error.hpp). Merges that weigh keys by the queries and values by
/// the output projection are in merge_aware.hpp; the gated mixture of fine-tuning is in
/// gate_mixture.hpp.
#ifndef HEADALIGN_MERGE_HPP
#define HEADALIGN_MERGE_HPP

#include "gram.hpp"
#include "transforms.hpp"

#include <vector>

namespace headalign {

namespace detail {

/// Checks per-KV-head merge weights: size, finite, non-negative, positive sum in every group.
template <class S>
void check_merge_weights(const Vector<S>& weights, Index kv_heads, Index group_size, const char* what) {
  HEADALIGN_CHECK(weights.size() == kv_heads,
                  what << " has " << weights.size() << " entries for " << kv_heads << " KV heads");
  detail::check_finite(weights, what);
  HEADALIGN_CHECK((weights.array() >= S(0)).all(), what << " must be non-negative");
  for (Index g = 0; g < kv_heads / group_size; ++g)
    HEADALIGN_CHECK(weights.segment(g * group_size, group_size).sum() > S(0),
                    what << " sum to zero in group " << g << " (heads " << g * group_size << " … "
                         << (g + 1) * group_size - 1 << ")");
}

/// The GQA layer's unchanged parts: q, o and their biases, head counts; k and v left empty.
template <class S>
AttentionWeights<S> gqa_shell(const AttentionWeights<S>& w, Index num_groups) {
  AttentionWeights<S> out;
  out.num_heads = w.num_heads;
  out.num_kv_heads = num_groups;
  out.head_dim = w.head_dim;
  out.q = w.q;
  out.o = w.o;
  out.q_bias = w.q_bias;
  out.o_bias = w.o_bias;
  return out;
}

}  // namespace detail

/// @brief Merges the KV heads of a layer into @p num_groups contiguous groups by (weighted) mean.
///
/// KV head j goes to group j / (Hkv / g); the group's k and v rows and biases are
/// \f$ \sum_{j \in g} w_j W_j / \sum_{j \in g} w_j \f$ (plain mean when the weights are empty).
/// q and o are unchanged, `num_kv_heads` becomes g, and query head h reads KV head
/// h / (H / g) — Hugging Face `repeat_kv`, `num_key_value_heads = g`. Works on an MHA layer
/// (usually after apply_alignment()) and on a GQA layer (merging further).
///
/// @param key_weights per-KV-head weights for k (empty = equal), e.g. head_energies() of the key Gram
/// @param value_weights per-KV-head weights for v (empty = equal)
/// @throws invalid_argument when num_kv_heads is not divisible by @p num_groups, for invalid
///         weights (negative, non-finite, zero sum in a group) or an inconsistent layer
template <class S>
AttentionWeights<S> merge_to_gqa(const AttentionWeights<S>& w, Index num_groups,
                                 const typename AttentionWeights<S>::Vec& key_weights = {},
                                 const typename AttentionWeights<S>::Vec& value_weights = {}) {
  w.validate();
  HEADALIGN_CHECK(num_groups > 0 && w.num_kv_heads % num_groups == 0,
                  "merge_to_gqa: num_kv_heads (" << w.num_kv_heads << ") is not divisible by num_groups ("
                                                 << num_groups << ")");
  const Index d = w.head_dim, k = w.num_kv_heads / num_groups;
  if (key_weights.size() != 0)
    detail::check_merge_weights(key_weights, w.num_kv_heads, k, "merge_to_gqa: key_weights");
  if (value_weights.size() != 0)
    detail::check_merge_weights(value_weights, w.num_kv_heads, k, "merge_to_gqa: value_weights");

  using Rows = typename AttentionWeights<S>::Rows;
  using Vec = typename AttentionWeights<S>::Vec;
  auto merge_rows = [&](const Rows& src, const Vector<S>& weights) {
    Rows out = Rows::Zero(num_groups * d, src.cols());
    for (Index g = 0; g < num_groups; ++g) {
      const S total = weights.size() ? weights.segment(g * k, k).sum() : static_cast<S>(k);
      for (Index j = g * k; j < (g + 1) * k; ++j)
        out.middleRows(g * d, d) += ((weights.size() ? weights(j) : S(1)) / total) * src.middleRows(j * d, d);
    }
    return out;
  };
  auto merge_bias = [&](const Vec& src, const Vector<S>& weights) {
    if (src.size() == 0) return Vec();
    Vec out = Vec::Zero(num_groups * d);
    for (Index g = 0; g < num_groups; ++g) {
      const S total = weights.size() ? weights.segment(g * k, k).sum() : static_cast<S>(k);
      for (Index j = g * k; j < (g + 1) * k; ++j)
        out.segment(g * d, d) += ((weights.size() ? weights(j) : S(1)) / total) * src.segment(j * d, d);
    }
    return out;
  };
  AttentionWeights<S> out = detail::gqa_shell(w, num_groups);
  out.k = merge_rows(w.k, key_weights);
  out.v = merge_rows(w.v, value_weights);
  out.k_bias = merge_bias(w.k_bias, key_weights);
  out.v_bias = merge_bias(w.v_bias, value_weights);
  detail::check_no_overflow<S>("merge_to_gqa", out.k, out.v, out.k_bias, out.v_bias);
  return out;
}

/// @brief Per-head calibration energy \f$ \mathrm{tr}\,G_{hh} / n = \mathbb{E}\|x_h\|^2 \f$, a
/// natural weight for merge_to_gqa() (heads that carry more signal count more).
template <class S>
Vector<S> head_energies(const HeadGram<S>& g) {
  HEADALIGN_CHECK(g.tokens() > 0, "head_energies: the HeadGram holds no tokens");
  Vector<S> e(g.num_heads());
  for (Index h = 0; h < g.num_heads(); ++h) e(h) = g.trace(h) / static_cast<S>(g.tokens());
  return e;
}

}  // namespace headalign

#endif  // HEADALIGN_MERGE_HPP
