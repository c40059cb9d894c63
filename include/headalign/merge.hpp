/// @file merge.hpp
/// @brief Merging aligned KV heads into grouped-query attention, the gated mixture used while
/// fine-tuning, and the merge error predicted from the Gram before anything is merged.
///
/// Keys and values are linear in the projection weights: if KV head j of a group computes
/// \f$ K_j = x W_{k,j}^\top + b_{k,j} \f$, the head with the group's mean weights and bias
/// computes exactly \f$ \frac1k \sum_j K_j \f$. So mean-pooling weights (Sec. 3.5 of
/// arXiv 2412.20677) replaces every head's keys by the group's mean shape, and the error this
/// makes on the calibration tokens, \f$ \sum_j \mathbb{E}\|K_j - \bar K\|^2 \f$, is a function of
/// the Gram blocks alone (predicted_merge_error()).
#ifndef HEADALIGN_MERGE_HPP
#define HEADALIGN_MERGE_HPP

#include "gram.hpp"
#include "rope.hpp"
#include "transforms.hpp"

#include <algorithm>
#include <optional>
#include <vector>

namespace headalign {

namespace detail {

/// Checks per-KV-head merge weights: size, finite, non-negative, positive sum in every group.
template <class S>
void check_merge_weights(const Vector<S>& weights, Index kv_heads, Index group_size, const char* what) {
  HEADALIGN_CHECK(weights.size() == kv_heads, what << " has " << weights.size() << " entries for " << kv_heads << " KV heads");
  detail::check_finite(weights, what);
  HEADALIGN_CHECK((weights.array() >= S(0)).all(), what << " must be non-negative");
  for (Index g = 0; g < kv_heads / group_size; ++g)
    HEADALIGN_CHECK(weights.segment(g * group_size, group_size).sum() > S(0),
                    what << " sum to zero in group " << g << " (heads " << g * group_size << " … "
                         << (g + 1) * group_size - 1 << ")");
}

/// Checks the arguments every predicted_merge_error() shares: a Gram with tokens, disjoint
/// non-empty groups of valid heads, and d × d rotations per head (or none).
template <class S>
void check_merge_groups(const HeadGram<S>& g, const std::vector<std::vector<Index>>& groups,
                        const std::vector<Matrix<S>>& rotations) {
  const Index h = g.num_heads(), d = g.head_dim();
  HEADALIGN_CHECK(g.tokens() > 0, "predicted_merge_error: the HeadGram holds no tokens");
  HEADALIGN_CHECK(rotations.empty() || static_cast<Index>(rotations.size()) == h,
                  "predicted_merge_error: " << rotations.size() << " rotations for " << h << " heads");
  for (const auto& r : rotations)
    HEADALIGN_CHECK(r.rows() == d && r.cols() == d,
                    "predicted_merge_error: a rotation is " << r.rows() << " × " << r.cols() << ", expected " << d << " × " << d);
  std::vector<char> seen(static_cast<std::size_t>(h), 0);
  for (const auto& grp : groups) {
    HEADALIGN_CHECK(!grp.empty(), "predicted_merge_error: a group is empty");
    for (Index t : grp) {
      HEADALIGN_CHECK(t >= 0 && t < h, "predicted_merge_error: head " << t << " out of range for " << h << " heads");
      HEADALIGN_CHECK(!seen[static_cast<std::size_t>(t)], "predicted_merge_error: head " << t << " is in two groups");
      seen[static_cast<std::size_t>(t)] = 1;
    }
  }
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
                  "merge_to_gqa: num_kv_heads (" << w.num_kv_heads << ") is not divisible by num_groups (" << num_groups << ")");
  const Index d = w.head_dim, k = w.num_kv_heads / num_groups;
  if (key_weights.size() != 0) detail::check_merge_weights(key_weights, w.num_kv_heads, k, "merge_to_gqa: key_weights");
  if (value_weights.size() != 0) detail::check_merge_weights(value_weights, w.num_kv_heads, k, "merge_to_gqa: value_weights");

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

/// @brief The gated mixture of fine-tuning, on weights: every original KV head h gets
/// \f$ z_h W_h + (1 - z_h) W_{\mathrm{group}(h)} \f$ for k and v (rows and biases).
///
/// @p mha is the aligned MHA layer, @p gqa its merge_to_gqa(); the result is an MHA-layout layer
/// (num_kv_heads = num_heads): z = 1 everywhere gives @p mha, z = 0 everywhere a layer that
/// computes exactly what @p gqa computes. The reference trains one gate per original KV head,
/// shared by k and v ([layers, groups, heads_per_group]) and drives all of them to 0.
/// @param key_gates z per original KV head for k (any real values; training keeps them in [0, 1])
/// @param value_gates z per original KV head for v
/// @throws invalid_argument when the two layers do not belong together or the gates' sizes differ
template <class S>
AttentionWeights<S> gated_weights(const AttentionWeights<S>& mha, const AttentionWeights<S>& gqa,
                                  const typename AttentionWeights<S>::Vec& key_gates,
                                  const typename AttentionWeights<S>::Vec& value_gates) {
  mha.validate();
  gqa.validate();
  const Index h = mha.num_kv_heads, d = mha.head_dim, g = gqa.num_kv_heads;
  HEADALIGN_CHECK(gqa.head_dim == d && gqa.hidden_size() == mha.hidden_size() && g > 0 && h % g == 0,
                  "gated_weights: the GQA layer (" << g << " KV heads × " << gqa.head_dim << ", hidden "
                                                   << gqa.hidden_size() << ") does not merge the MHA layer ("
                                                   << h << " × " << d << ", hidden " << mha.hidden_size() << ")");
  HEADALIGN_CHECK(mha.k_bias.size() == 0 ? gqa.k_bias.size() == 0 : gqa.k_bias.size() == g * d,
                  "gated_weights: k biases of the MHA and GQA layers do not correspond");
  HEADALIGN_CHECK(mha.v_bias.size() == 0 ? gqa.v_bias.size() == 0 : gqa.v_bias.size() == g * d,
                  "gated_weights: v biases of the MHA and GQA layers do not correspond");
  HEADALIGN_CHECK(key_gates.size() == h && value_gates.size() == h,
                  "gated_weights: " << key_gates.size() << " key and " << value_gates.size() << " value gates for " << h
                                    << " KV heads");
  detail::check_finite(key_gates, "gated_weights: key_gates");
  detail::check_finite(value_gates, "gated_weights: value_gates");
  const Index k = h / g;
  AttentionWeights<S> out = mha;
  for (Index j = 0; j < h; ++j) {
    const S zk = key_gates(j), zv = value_gates(j);
    const Index grp = j / k;
    out.k.middleRows(j * d, d) = zk * mha.k.middleRows(j * d, d) + (S(1) - zk) * gqa.k.middleRows(grp * d, d);
    out.v.middleRows(j * d, d) = zv * mha.v.middleRows(j * d, d) + (S(1) - zv) * gqa.v.middleRows(grp * d, d);
    if (out.k_bias.size())
      out.k_bias.segment(j * d, d) = zk * mha.k_bias.segment(j * d, d) + (S(1) - zk) * gqa.k_bias.segment(grp * d, d);
    if (out.v_bias.size())
      out.v_bias.segment(j * d, d) = zv * mha.v_bias.segment(j * d, d) + (S(1) - zv) * gqa.v_bias.segment(grp * d, d);
  }
  detail::check_no_overflow<S>("gated_weights", out.k, out.v, out.k_bias, out.v_bias);
  return out;
}

/// @brief The gated mixture on activations: column block h of the result is
/// \f$ z_h A_h + (1 - z_h) B_{h / (H/g)} \f$, for per-head activations @p per_head (n × H·d)
/// and per-group activations @p per_group (n × g·d), e.g. keys or values of a batch.
/// Equal to the activations of gated_weights() (keys and values are linear in the weights).
/// @throws invalid_argument for inconsistent shapes
template <class DA, class DB, class DZ>
Matrix<typename DA::Scalar> gate_mix(const Eigen::MatrixBase<DA>& per_head, const Eigen::MatrixBase<DB>& per_group,
                                     const Eigen::DenseBase<DZ>& gates, Index head_dim) {
  using S = typename DA::Scalar;
  HEADALIGN_CHECK(head_dim > 0 && per_head.cols() % head_dim == 0 && per_group.cols() % head_dim == 0,
                  "gate_mix: " << per_head.cols() << " and " << per_group.cols() << " columns are not multiples of head_dim ("
                               << head_dim << ")");
  const Index h = per_head.cols() / head_dim, g = per_group.cols() / head_dim;
  HEADALIGN_CHECK(g > 0 && h % g == 0, "gate_mix: " << h << " heads are not divisible into " << g << " groups");
  HEADALIGN_CHECK(per_group.rows() == per_head.rows(),
                  "gate_mix: " << per_head.rows() << " rows of heads but " << per_group.rows() << " rows of groups");
  HEADALIGN_CHECK(gates.size() == h, "gate_mix: " << gates.size() << " gates for " << h << " heads");
  Matrix<S> out(per_head.rows(), per_head.cols());
  for (Index j = 0; j < h; ++j) {
    const S z = static_cast<S>(gates.derived().coeff(j));
    out.middleCols(j * head_dim, head_dim) = z * per_head.middleCols(j * head_dim, head_dim) +
                                             (S(1) - z) * per_group.middleCols((j / (h / g)) * head_dim, head_dim);
  }
  return out;
}

/// @brief Predicted cost of merging, from the Gram alone (see predicted_merge_error()).
template <class S>
struct MergeError {
  Vector<S> per_head;   ///< per head index: \f$ \mathbb{E}\|x_h R_h - m_{\mathrm{group}(h)}\|^2 \f$
  Vector<S> per_group;  ///< per group: the sum over its heads
  S total = 0;          ///< the sum over all heads
  S energy = 0;         ///< \f$ \sum_h \mathbb{E}\|x_h\|^2 \f$ over the grouped heads
  /// total / energy: the fraction of the heads' signal that merging loses (0 = lossless)
  S relative() const { return energy > S(0) ? total / energy : S(0); }
};

/// @brief The error that merging will make, predicted from the Gram before any merging happens.
///
/// For a group of heads t with transforms \f$ R_t \f$ and merge weights \f$ w_t \f$, the merged
/// head computes the weighted mean shape \f$ m = \sum_u w_u x_u R_u / \sum_u w_u \f$ per token.
/// Head t's expected squared error is
/// \f[ e_t = \frac1n\Big[\mathrm{tr}\,G_{tt} - 2\,\frac{\sum_u w_u \mathrm{tr}(R_t^\top G_{tu} R_u)}{W}
///          + \frac{\sum_{u,v} w_u w_v \mathrm{tr}(R_u^\top G_{uv} R_v)}{W^2}\Big],\quad W = \sum_u w_u, \f]
/// which is exactly what the GQA layer from merge_to_gqa() makes on the calibration tokens when
/// @p g accumulated the (unnormalised) projection outputs — biases included when the tokens were,
/// since the bias merges by the same mean. With a row-normalised Gram it is the same quantity
/// for unit-length head vectors. Comparing the relative error across layers and group counts
/// lets a user choose how many KV heads each layer keeps before converting.
///
/// @param groups disjoint groups of head indices (every group non-empty; heads not listed are ignored)
/// @param rotations per head index, d × d (empty = identities: plain mean-pool)
/// @param weights per head index, the merge weights (empty = equal)
/// @throws invalid_argument for out-of-range or repeated heads, wrong sizes, an empty Gram
template <class S>
MergeError<S> predicted_merge_error(const HeadGram<S>& g, const std::vector<std::vector<Index>>& groups,
                                    const std::vector<Matrix<S>>& rotations = {},
                                    const typename HeadGram<S>::Vec& weights = {}) {
  const Index h = g.num_heads();
  detail::check_merge_groups(g, groups, rotations);
  HEADALIGN_CHECK(weights.size() == 0 || weights.size() == h,
                  "predicted_merge_error: " << weights.size() << " weights for " << h << " heads");
  if (weights.size()) {
    detail::check_finite(weights, "predicted_merge_error: weights");
    HEADALIGN_CHECK((weights.array() >= S(0)).all(), "predicted_merge_error: weights must be non-negative");
  }
  const S n = static_cast<S>(g.tokens());
  MergeError<S> err;
  err.per_head = Vector<S>::Zero(h);
  err.per_group = Vector<S>::Zero(static_cast<Index>(groups.size()));
  for (std::size_t gi = 0; gi < groups.size(); ++gi) {
    const auto& grp = groups[gi];
    const std::size_t k = grp.size();
    Vector<S> w(static_cast<Index>(k));
    for (std::size_t t = 0; t < k; ++t) w(static_cast<Index>(t)) = weights.size() ? weights(grp[t]) : S(1);
    const S total_w = w.sum();
    HEADALIGN_CHECK(total_w > S(0), "predicted_merge_error: the weights of group " << gi << " sum to zero");
    // c(t, u) = tr(R_tᵀ G_tu R_u) = ⟨G_tu R_u, R_t⟩: one product per pair.
    Matrix<S> c(static_cast<Index>(k), static_cast<Index>(k)), product;
    for (std::size_t t = 0; t < k; ++t)
      for (std::size_t u = t; u < k; ++u) {
        S ctu;
        if (rotations.empty()) {
          ctu = t == u ? g.trace(grp[t]) : g.block(grp[t], grp[u]).trace();
        } else {
          detail::gemm<S>(g.block(grp[t], grp[u]), rotations[static_cast<std::size_t>(grp[u])], S(0), product);
          ctu = product.cwiseProduct(rotations[static_cast<std::size_t>(grp[t])]).sum();
        }
        c(static_cast<Index>(t), static_cast<Index>(u)) = c(static_cast<Index>(u), static_cast<Index>(t)) = ctu;
      }
    const S mean_sq = w.dot(c * w) / (total_w * total_w);
    const Vector<S> cross = c * w / total_w;
    for (std::size_t t = 0; t < k; ++t) {
      const Index ti = static_cast<Index>(t);
      const S e = std::max(S(0), (c(ti, ti) - S(2) * cross(ti) + mean_sq) / n);
      err.per_head(grp[t]) = e;
      err.per_group(static_cast<Index>(gi)) += e;
      err.energy += c(ti, ti) / n;
    }
    err.total += err.per_group(static_cast<Index>(gi));
  }
  if (!std::isfinite(static_cast<double>(err.total)) || !std::isfinite(static_cast<double>(err.energy)))
    detail::throw_overflow<S>("predicted_merge_error");
  return err;
}

// ---------------------------------------------------------------------------------------------
// Merging that knows where keys and values go.
// ---------------------------------------------------------------------------------------------

/// @brief How the heads of a group are merged.
///
/// The mean minimises the keys' and values' own squared error; what the model needs preserved is
/// what the heads produce: logits \f$ q_h^\top k \f$ and outputs \f$ W_{o,h} v \f$. Both have
/// closed-form optima (mixing_from_metrics()).
enum class MergeWeighting {
  Mean,         ///< plain (weighted) mean of the group's rows — the paper's Sec. 3.5
  OutputAware,  ///< values weighted by the output projection: \f$ \min \sum_h \|O_h(V_h - V_g)\|_F^2 \f$
  QueryAware,   ///< keys weighted by the query statistics: \f$ \min \sum_h E[(q_h^\top(k_h - k_g))^2] \f$
  Full          ///< both
};

/// @brief Settings of the merge (merge_mixing(), convert_layer()).
struct MergeOptions {
  MergeWeighting weighting = MergeWeighting::Mean;
  /// Ridge ρ: every head's metric A_h becomes \f$ A_h + \lambda I \f$ with
  /// \f$ \lambda = \rho\, \mathrm{tr}(\sum_{h \in g} A_h) / (k d) \f$ (ρ times the mean eigenvalue),
  /// which shrinks directions that no head's metric sees towards the plain mean and keeps the
  /// solve well conditioned. 0 = none (then a singular metric sum is an error).
  double ridge = 1e-3;
  /// The model's RoPE, for query-aware key merging: the query metrics are averaged over relative
  /// positions (rope_average()). Unset: convert_layer() takes the plan's RoPE when the keys were
  /// RoPE-aligned, and no averaging otherwise.
  std::optional<RopeSpec> rope;
};

/// @brief Per-KV-head d × d mixing matrices of a merge: group g's rows are
/// \f$ K_g = \sum_{u \in g} M_u K_u \f$ (and its bias \f$ \sum_u M_u b_u \f$), with
/// \f$ \sum_{u \in g} M_u = I \f$. Empty = the plain mean (\f$ M_u = I / k \f$).
template <class S>
struct MergeMixing {
  std::vector<Matrix<S>> key;
  std::vector<Matrix<S>> value;
};

/// @brief RoPE-averaged query metric: the expectation of \f$ R(\theta m)^\top \Sigma R(\theta m) \f$
/// over relative positions m.
///
/// Inside rotary plane p = (a, b) it is \f$ \tfrac12(\Sigma_{aa} + \Sigma_{bb}) I_2 \f$ (half
/// the query energy of the plane); couplings between planes of different frequencies and between
/// rotary and non-rotary dimensions average to zero; the non-rotary block is kept as it is.
/// @throws invalid_argument when @p sigma is not square or the RoPE spec does not fit
template <class D>
Matrix<typename D::Scalar> rope_average(const Eigen::MatrixBase<D>& sigma, const RopeSpec& rope) {
  using S = typename D::Scalar;
  HEADALIGN_CHECK(sigma.rows() == sigma.cols(), "rope_average: the metric is " << sigma.rows() << " × " << sigma.cols());
  const Index d = sigma.rows(), r = rotary_dims(rope, d);
  Matrix<S> out = Matrix<S>::Zero(d, d);
  for (const auto& p : rope_planes(rope, d)) {
    const S e = (sigma(p.first, p.first) + sigma(p.second, p.second)) / S(2);
    out(p.first, p.first) = out(p.second, p.second) = e;
  }
  if (r < d) out.bottomRightCorner(d - r, d - r) = sigma.bottomRightCorner(d - r, d - r);
  return out;
}

/// @brief Output metrics of a layer: for KV head j, \f$ A_j = \sum_{p \to j} O_p^\top O_p \f$ over
/// the query heads p that read it, \f$ O_p = W_o[:, p d : (p+1) d] \f$ (d × d each).
///
/// \f$ \|O_p(V_j - V_g)\|_F^2 = \mathrm{tr}((V_j - V_g)^\top A (V_j - V_g)) \f$: the output error
/// of replacing head j's values by the group's, for whitened inputs.
template <class S>
std::vector<Matrix<S>> output_metrics(const AttentionWeights<S>& w) {
  w.validate();
  const Index d = w.head_dim, per = w.group_size();
  std::vector<Matrix<S>> a(static_cast<std::size_t>(w.num_kv_heads), Matrix<S>::Zero(d, d));
  for (Index p = 0; p < w.num_heads; ++p)  // symmetric: half the products
    a[static_cast<std::size_t>(p / per)].template selfadjointView<Eigen::Lower>().rankUpdate(w.o.middleCols(p * d, d).transpose());
  for (auto& m : a) {
    m.template triangularView<Eigen::StrictlyUpper>() = m.transpose();
    detail::check_no_overflow<S>("output_metrics", m);
  }
  return a;
}

/// @brief Query metrics per KV head: \f$ A_j = \sum_{p \to j} R_p^\top \Sigma_{\mathrm{order}[p]} R_p / n \f$,
/// the per-token query second moments of the query heads that read KV head j, in the aligned basis.
///
/// \f$ E[(q_p^\top (k_j - k_g))^2] = \mathrm{tr}(A\,(K_j - K_g)(K_j - K_g)^\top) \f$ for whitened
/// inputs. With @p rope every \f$ \Sigma \f$ is first averaged over relative positions (rope_average()).
/// @param queries moments of the query heads of the original layer (HeadMoments, pre-RoPE)
/// @param num_kv_heads KV heads of the (aligned) layer; query head p reads KV head p / (H / num_kv_heads)
/// @param order new query head p is old head order[p] (empty = identity), as in apply_alignment()
/// @param rotations the key rotations R_p of apply_alignment() per new head (empty = identities)
/// @throws invalid_argument for inconsistent sizes or moments without tokens
template <class S>
std::vector<Matrix<S>> query_metrics(const HeadMoments<S>& queries, Index num_kv_heads,
                                     const std::optional<RopeSpec>& rope = std::nullopt,
                                     const std::vector<Index>& order = {}, const std::vector<Matrix<S>>& rotations = {}) {
  const Index h = queries.num_heads(), d = queries.head_dim();
  HEADALIGN_CHECK(queries.tokens() > 0, "query_metrics: the query moments hold no tokens");
  HEADALIGN_CHECK(num_kv_heads > 0 && h % num_kv_heads == 0,
                  "query_metrics: " << h << " query heads are not divisible into " << num_kv_heads << " KV heads");
  if (!order.empty()) detail::check_permutation(order, h, "query_metrics");
  HEADALIGN_CHECK(rotations.empty() || static_cast<Index>(rotations.size()) == h,
                  "query_metrics: " << rotations.size() << " rotations for " << h << " query heads");
  for (const auto& r : rotations)
    HEADALIGN_CHECK(r.rows() == d && r.cols() == d, "query_metrics: a rotation is " << r.rows() << " × " << r.cols() << ", expected "
                                                                                    << d << " × " << d);
  const Index per = h / num_kv_heads;
  const S n = static_cast<S>(queries.tokens());
  std::vector<Matrix<S>> a(static_cast<std::size_t>(num_kv_heads), Matrix<S>::Zero(d, d));
  for (Index p = 0; p < h; ++p) {
    Matrix<S> m = queries.block(order.empty() ? p : order[static_cast<std::size_t>(p)]) / n;
    if (!rotations.empty()) m = rotations[static_cast<std::size_t>(p)].transpose() * m * rotations[static_cast<std::size_t>(p)];
    a[static_cast<std::size_t>(p / per)] += rope ? rope_average(m, *rope) : m;
  }
  for (const auto& m : a) detail::check_no_overflow<S>("query_metrics", m);
  return a;
}

/// @brief The closed-form merge for per-head metrics: \f$ M_u = (\sum_{v \in g} \tilde A_v)^{-1} \tilde A_u \f$,
/// \f$ \tilde A = A + \lambda I \f$, so that \f$ V_g = \sum_u M_u V_u \f$ minimises
/// \f$ \sum_{u \in g} \|\tilde A_u^{1/2} (V_u - V_g)\|_F^2 \f$ (bias likewise).
///
/// Setting the gradient \f$ -2 \sum_u \tilde A_u (V_u - V_g) \f$ to zero gives
/// \f$ (\sum_u \tilde A_u) V_g = \sum_u \tilde A_u V_u \f$. Equal metrics give the mean;
/// \f$ \lambda = \rho\,\mathrm{tr}(\sum_u A_u)/(k d) \f$ (MergeOptions::ridge); a group whose
/// metrics are all zero is merged by the mean.
/// @param metrics per KV head, d × d symmetric positive semi-definite
/// @param num_groups contiguous groups of metrics.size() / num_groups heads
/// @throws invalid_argument for inconsistent sizes, NaN/Inf, a negative ridge, or a singular
///         metric sum with ridge 0
template <class S>
std::vector<Matrix<S>> mixing_from_metrics(const std::vector<Matrix<S>>& metrics, Index num_groups, double ridge = 1e-3) {
  const Index h = static_cast<Index>(metrics.size());
  HEADALIGN_CHECK(num_groups > 0 && h > 0 && h % num_groups == 0,
                  "mixing_from_metrics: " << h << " metrics are not divisible into " << num_groups << " groups");
  HEADALIGN_CHECK(std::isfinite(ridge) && ridge >= 0, "mixing_from_metrics: ridge (" << ridge << ") must be finite and non-negative");
  const Index d = metrics.front().rows(), k = h / num_groups;
  for (const auto& a : metrics) {
    HEADALIGN_CHECK(a.rows() == d && a.cols() == d, "mixing_from_metrics: metrics of different shapes (" << a.rows() << " × " << a.cols()
                                                                                                       << " and " << d << " × " << d << ")");
    detail::check_finite(a, "mixing_from_metrics: metric");
  }
  std::vector<Matrix<S>> mix(static_cast<std::size_t>(h));
  for (Index g = 0; g < num_groups; ++g) {
    Matrix<S> sum = Matrix<S>::Zero(d, d);
    for (Index u = g * k; u < (g + 1) * k; ++u) sum += metrics[static_cast<std::size_t>(u)];
    const S trace = sum.trace();
    if (!detail::all_finite(sum) || !std::isfinite(static_cast<double>(trace))) detail::throw_overflow<S>("mixing_from_metrics");
    if (!(trace > S(0))) {
      for (Index u = g * k; u < (g + 1) * k; ++u) mix[static_cast<std::size_t>(u)] = Matrix<S>::Identity(d, d) / static_cast<S>(k);
      continue;
    }
    const S lambda = static_cast<S>(ridge) * trace / static_cast<S>(k * d);
    sum.diagonal().array() += static_cast<S>(k) * lambda;
    const Eigen::LLT<Matrix<S>> llt(sum);
    HEADALIGN_CHECK(llt.info() == Eigen::Success,
                    "mixing_from_metrics: the metrics of group " << g << " sum to a singular matrix; use a positive ridge");
    for (Index u = g * k; u < (g + 1) * k; ++u) {
      Matrix<S> a = metrics[static_cast<std::size_t>(u)];
      a.diagonal().array() += lambda;
      mix[static_cast<std::size_t>(u)] = llt.solve(a);
      detail::check_no_overflow<S>("mixing_from_metrics", mix[static_cast<std::size_t>(u)]);
    }
  }
  return mix;
}

/// @brief Merges the KV heads into @p num_groups contiguous groups with mixing matrices:
/// \f$ K_g = \sum_{u \in g} M_u K_u \f$, \f$ b_g = \sum_u M_u b_u \f$ (empty mixing = mean).
/// q and o are unchanged; see merge_to_gqa() for the layout.
/// @throws invalid_argument for a wrong number or shape of mixing matrices, or NaN/Inf in them
template <class S>
AttentionWeights<S> merge_to_gqa(const AttentionWeights<S>& w, Index num_groups, const MergeMixing<S>& mixing) {
  w.validate();
  HEADALIGN_CHECK(num_groups > 0 && w.num_kv_heads % num_groups == 0,
                  "merge_to_gqa: num_kv_heads (" << w.num_kv_heads << ") is not divisible by num_groups (" << num_groups << ")");
  const Index d = w.head_dim, k = w.num_kv_heads / num_groups;
  using Rows = typename AttentionWeights<S>::Rows;
  using Vec = typename AttentionWeights<S>::Vec;
  // [M_u for u in group g] side by side: d × (k·d), so that K_g = [M_1 … M_k] · [K_1; …; K_k] is one product.
  auto stacked = [&](const std::vector<Matrix<S>>& mix, const char* what) {
    HEADALIGN_CHECK(static_cast<Index>(mix.size()) == w.num_kv_heads,
                    "merge_to_gqa: " << mix.size() << " " << what << " mixing matrices for " << w.num_kv_heads << " KV heads");
    std::vector<Matrix<S>> out(static_cast<std::size_t>(num_groups), Matrix<S>(d, k * d));
    for (Index u = 0; u < w.num_kv_heads; ++u) {
      const Matrix<S>& m = mix[static_cast<std::size_t>(u)];
      HEADALIGN_CHECK(m.rows() == d && m.cols() == d,
                      "merge_to_gqa: a " << what << " mixing matrix is " << m.rows() << " × " << m.cols() << ", expected " << d << " × " << d);
      detail::check_finite(m, "merge_to_gqa: mixing matrix");
      out[static_cast<std::size_t>(u / k)].middleCols((u % k) * d, d) = m;
    }
    return out;
  };
  auto apply = [&](const std::vector<Matrix<S>>& blocks, const Rows& src, const Vec& bias, Rows& rows, Vec& merged_bias) {
    rows.resize(num_groups * d, src.cols());
    if (bias.size()) merged_bias.resize(num_groups * d);
    for (Index g = 0; g < num_groups; ++g) {
      rows.middleRows(g * d, d).noalias() = blocks[static_cast<std::size_t>(g)] * src.middleRows(g * k * d, k * d);
      if (bias.size()) merged_bias.segment(g * d, d).noalias() = blocks[static_cast<std::size_t>(g)] * bias.segment(g * k * d, k * d);
    }
  };
  // Validate both mixings before any work; the mean for whatever has none.
  const auto key_blocks = mixing.key.empty() ? std::vector<Matrix<S>>() : stacked(mixing.key, "key");
  const auto value_blocks = mixing.value.empty() ? std::vector<Matrix<S>>() : stacked(mixing.value, "value");
  AttentionWeights<S> out =
      mixing.key.empty() || mixing.value.empty() ? merge_to_gqa(w, num_groups) : detail::gqa_shell(w, num_groups);
  if (!key_blocks.empty()) apply(key_blocks, w.k, w.k_bias, out.k, out.k_bias);
  if (!value_blocks.empty()) apply(value_blocks, w.v, w.v_bias, out.v, out.v_bias);
  detail::check_no_overflow<S>("merge_to_gqa", out.k, out.v, out.k_bias, out.v_bias);
  return out;
}

/// @brief The mixing matrices of a merge weighting for an (aligned) layer.
///
/// OutputAware: values by output_metrics(@p aligned); QueryAware: keys by @p key_metrics (from
/// query_metrics()); Full: both; Mean: neither.
/// @param value_metrics output_metrics(@p aligned) when the caller has them already (empty: computed here if needed)
/// @throws invalid_argument when QueryAware/Full has no key metrics, or for inconsistent sizes
template <class S>
MergeMixing<S> merge_mixing(const AttentionWeights<S>& aligned, Index num_groups, const MergeOptions& options,
                            const std::vector<Matrix<S>>& key_metrics = {},
                            const std::vector<Matrix<S>>& value_metrics = {}) {
  MergeMixing<S> mix;
  const bool values = options.weighting == MergeWeighting::OutputAware || options.weighting == MergeWeighting::Full;
  const bool keys = options.weighting == MergeWeighting::QueryAware || options.weighting == MergeWeighting::Full;
  if (values)
    mix.value = mixing_from_metrics(value_metrics.empty() ? output_metrics(aligned) : value_metrics, num_groups, options.ridge);
  if (keys) {
    HEADALIGN_CHECK(!key_metrics.empty(), "merge_mixing: query-aware key merging needs query statistics (query_metrics())");
    HEADALIGN_CHECK(static_cast<Index>(key_metrics.size()) == aligned.num_kv_heads,
                    "merge_mixing: " << key_metrics.size() << " key metrics for " << aligned.num_kv_heads << " KV heads");
    mix.key = mixing_from_metrics(key_metrics, num_groups, options.ridge);
  }
  return mix;
}

/// @brief Predicted error of a matrix-weighted merge, measured in a metric, from the Gram alone.
///
/// With aligned blocks \f$ B_{tu} = R_t^\top G_{tu} R_u \f$ and the merged head
/// \f$ m = \sum_u x_u R_u M_u^\top \f$, head t's error covariance is
/// \f$ C_t = B_{tt} - P_t - P_t^\top + \sum_u M_u P_u \f$ with \f$ P_t = \sum_u B_{tu} M_u^\top \f$,
/// and its error \f$ e_t = \mathrm{tr}(A_t C_t)/n \f$, energy \f$ \mathrm{tr}(A_t B_{tt})/n \f$.
/// With \f$ A_t \f$ = output metrics this is the output error \f$ E\|O_t(v_t - v_g)\|^2 \f$; with
/// query metrics the logit error \f$ E[(q_t^\top(k_t - k_g))^2] \f$; with identities and
/// \f$ M_u = I/k \f$ it is predicted_merge_error() above.
/// @param rotations, mixing, metrics per head index (d × d; empty = identities, the mean, identities)
/// @throws invalid_argument for out-of-range or repeated heads, wrong sizes, an empty Gram
template <class S>
MergeError<S> predicted_merge_error(const HeadGram<S>& g, const std::vector<std::vector<Index>>& groups,
                                    const std::vector<Matrix<S>>& rotations, const std::vector<Matrix<S>>& mixing,
                                    const std::vector<Matrix<S>>& metrics) {
  const Index h = g.num_heads(), d = g.head_dim();
  detail::check_merge_groups(g, groups, rotations);
  for (const auto* v : {&mixing, &metrics}) {
    HEADALIGN_CHECK(v->empty() || static_cast<Index>(v->size()) == h,
                    "predicted_merge_error: " << v->size() << " mixing or metric matrices for " << h << " heads");
    for (const auto& m : *v)
      HEADALIGN_CHECK(m.rows() == d && m.cols() == d, "predicted_merge_error: a mixing or metric matrix is " << m.rows() << " × "
                                                                                                         << m.cols() << ", expected " << d
                                                                                                         << " × " << d);
  }
  const S n = static_cast<S>(g.tokens());
  MergeError<S> err;
  err.per_head = Vector<S>::Zero(h);
  err.per_group = Vector<S>::Zero(static_cast<Index>(groups.size()));
  for (std::size_t gi = 0; gi < groups.size(); ++gi) {
    const auto& grp = groups[gi];
    const std::size_t k = grp.size();
    auto rot = [&](std::size_t t) -> Matrix<S> {
      return rotations.empty() ? Matrix<S>::Identity(d, d) : rotations[static_cast<std::size_t>(grp[t])];
    };
    auto mix = [&](std::size_t t) -> Matrix<S> {
      return mixing.empty() ? Matrix<S>(Matrix<S>::Identity(d, d) / static_cast<S>(k)) : mixing[static_cast<std::size_t>(grp[t])];
    };
    std::vector<Matrix<S>> p(k, Matrix<S>::Zero(d, d)), diag(k);
    for (std::size_t t = 0; t < k; ++t)
      for (std::size_t u = 0; u < k; ++u) {
        const Matrix<S> b = rot(t).transpose() * g.block(grp[t], grp[u]) * rot(u);
        if (t == u) diag[t] = b;
        p[t].noalias() += b * mix(u).transpose();
      }
    Matrix<S> q = Matrix<S>::Zero(d, d);
    for (std::size_t u = 0; u < k; ++u) q.noalias() += mix(u) * p[u];
    for (std::size_t t = 0; t < k; ++t) {
      const Matrix<S> c = diag[t] - p[t] - p[t].transpose() + q;
      const S e = metrics.empty() ? c.trace() : (metrics[static_cast<std::size_t>(grp[t])].cwiseProduct(c)).sum();
      const S energy = metrics.empty() ? diag[t].trace() : (metrics[static_cast<std::size_t>(grp[t])].cwiseProduct(diag[t])).sum();
      err.per_head(grp[t]) = std::max(S(0), e / n);
      err.per_group(static_cast<Index>(gi)) += err.per_head(grp[t]);
      err.energy += energy / n;
    }
    err.total += err.per_group(static_cast<Index>(gi));
  }
  if (!std::isfinite(static_cast<double>(err.total)) || !std::isfinite(static_cast<double>(err.energy)))
    detail::throw_overflow<S>("predicted_merge_error");
  return err;
}

}  // namespace headalign

#endif  // HEADALIGN_MERGE_HPP
