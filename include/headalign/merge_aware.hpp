/// @file merge_aware.hpp
/// @brief Merging that knows where keys and values go: keys weighted by what the queries read,
/// values by what the output projection reads, each in closed form (mixing_from_metrics()).
#ifndef HEADALIGN_MERGE_AWARE_HPP
#define HEADALIGN_MERGE_AWARE_HPP

#include "gram.hpp"
#include "merge.hpp"
#include "rope.hpp"
#include "transforms.hpp"

#include <cmath>
#include <optional>
#include <vector>

namespace headalign {

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
  HEADALIGN_CHECK(sigma.rows() == sigma.cols(),
                  "rope_average: the metric is " << sigma.rows() << " × " << sigma.cols());
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
    a[static_cast<std::size_t>(p / per)].template selfadjointView<Eigen::Lower>().rankUpdate(
        w.o.middleCols(p * d, d).transpose());
  for (auto& m : a) {
    m.template triangularView<Eigen::StrictlyUpper>() = m.transpose();
    detail::check_no_overflow<S>("output_metrics", m);
  }
  return a;
}

/// @brief Query metrics per KV head: \f$ A_j = \sum_{p \to j} R_p^\top \Sigma_{\mathrm{order}[p]} R_p / n
/// \f$, the per-token query second moments of the query heads that read KV head j, in the aligned basis.
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
                                     const std::vector<Index>& order = {},
                                     const std::vector<Matrix<S>>& rotations = {}) {
  const Index h = queries.num_heads(), d = queries.head_dim();
  HEADALIGN_CHECK(queries.tokens() > 0, "query_metrics: the query moments hold no tokens");
  HEADALIGN_CHECK(
      num_kv_heads > 0 && h % num_kv_heads == 0,
      "query_metrics: " << h << " query heads are not divisible into " << num_kv_heads << " KV heads");
  if (!order.empty()) detail::check_permutation(order, h, "query_metrics");
  HEADALIGN_CHECK(rotations.empty() || static_cast<Index>(rotations.size()) == h,
                  "query_metrics: " << rotations.size() << " rotations for " << h << " query heads");
  for (const auto& r : rotations)
    HEADALIGN_CHECK(r.rows() == d && r.cols() == d, "query_metrics: a rotation is "
                                                        << r.rows() << " × " << r.cols() << ", expected " << d
                                                        << " × " << d);
  const Index per = h / num_kv_heads;
  const S n = static_cast<S>(queries.tokens());
  std::vector<Matrix<S>> a(static_cast<std::size_t>(num_kv_heads), Matrix<S>::Zero(d, d));
  for (Index p = 0; p < h; ++p) {
    Matrix<S> m = queries.block(order.empty() ? p : order[static_cast<std::size_t>(p)]) / n;
    if (!rotations.empty())
      m = rotations[static_cast<std::size_t>(p)].transpose() * m * rotations[static_cast<std::size_t>(p)];
    a[static_cast<std::size_t>(p / per)] += rope ? rope_average(m, *rope) : m;
  }
  for (const auto& m : a) detail::check_no_overflow<S>("query_metrics", m);
  return a;
}

/// @brief The closed-form merge for per-head metrics: \f$ M_u = (\sum_{v \in g} \tilde A_v)^{-1} \tilde A_u
/// \f$, \f$ \tilde A = A + \lambda I \f$, so that \f$ V_g = \sum_u M_u V_u \f$ minimises \f$ \sum_{u \in g}
/// \|\tilde A_u^{1/2} (V_u - V_g)\|_F^2 \f$ (bias likewise).
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
std::vector<Matrix<S>> mixing_from_metrics(const std::vector<Matrix<S>>& metrics, Index num_groups,
                                           double ridge = 1e-3) {
  const Index h = static_cast<Index>(metrics.size());
  HEADALIGN_CHECK(
      num_groups > 0 && h > 0 && h % num_groups == 0,
      "mixing_from_metrics: " << h << " metrics are not divisible into " << num_groups << " groups");
  HEADALIGN_CHECK(std::isfinite(ridge) && ridge >= 0,
                  "mixing_from_metrics: ridge (" << ridge << ") must be finite and non-negative");
  const Index d = metrics.front().rows(), k = h / num_groups;
  for (const auto& a : metrics) {
    HEADALIGN_CHECK(a.rows() == d && a.cols() == d, "mixing_from_metrics: metrics of different shapes ("
                                                        << a.rows() << " × " << a.cols() << " and " << d
                                                        << " × " << d << ")");
    detail::check_finite(a, "mixing_from_metrics: metric");
  }
  std::vector<Matrix<S>> mix(static_cast<std::size_t>(h));
  for (Index g = 0; g < num_groups; ++g) {
    Matrix<S> sum = Matrix<S>::Zero(d, d);
    for (Index u = g * k; u < (g + 1) * k; ++u) sum += metrics[static_cast<std::size_t>(u)];
    const S trace = sum.trace();
    if (!detail::all_finite(sum) || !std::isfinite(static_cast<double>(trace)))
      detail::throw_overflow<S>("mixing_from_metrics");
    if (!(trace > S(0))) {
      for (Index u = g * k; u < (g + 1) * k; ++u)
        mix[static_cast<std::size_t>(u)] = Matrix<S>::Identity(d, d) / static_cast<S>(k);
      continue;
    }
    const S lambda = static_cast<S>(ridge) * trace / static_cast<S>(k * d);
    sum.diagonal().array() += static_cast<S>(k) * lambda;
    const Eigen::LLT<Matrix<S>> llt(sum);
    HEADALIGN_CHECK(llt.info() == Eigen::Success, "mixing_from_metrics: the metrics of group "
                                                      << g
                                                      << " sum to a singular matrix; use a positive ridge");
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
AttentionWeights<S> merge_to_gqa(const AttentionWeights<S>& w, Index num_groups,
                                 const MergeMixing<S>& mixing) {
  w.validate();
  HEADALIGN_CHECK(num_groups > 0 && w.num_kv_heads % num_groups == 0,
                  "merge_to_gqa: num_kv_heads (" << w.num_kv_heads << ") is not divisible by num_groups ("
                                                 << num_groups << ")");
  const Index d = w.head_dim, k = w.num_kv_heads / num_groups;
  using Rows = typename AttentionWeights<S>::Rows;
  using Vec = typename AttentionWeights<S>::Vec;
  // [M_u for u in group g] side by side: d × (k·d), so that K_g = [M_1 … M_k] · [K_1; …; K_k] is one product.
  auto stacked = [&](const std::vector<Matrix<S>>& mix, const char* what) {
    HEADALIGN_CHECK(static_cast<Index>(mix.size()) == w.num_kv_heads,
                    "merge_to_gqa: " << mix.size() << " " << what << " mixing matrices for " << w.num_kv_heads
                                     << " KV heads");
    std::vector<Matrix<S>> out(static_cast<std::size_t>(num_groups), Matrix<S>(d, k * d));
    for (Index u = 0; u < w.num_kv_heads; ++u) {
      const Matrix<S>& m = mix[static_cast<std::size_t>(u)];
      HEADALIGN_CHECK(m.rows() == d && m.cols() == d, "merge_to_gqa: a " << what << " mixing matrix is "
                                                                         << m.rows() << " × " << m.cols()
                                                                         << ", expected " << d << " × " << d);
      detail::check_finite(m, "merge_to_gqa: mixing matrix");
      out[static_cast<std::size_t>(u / k)].middleCols((u % k) * d, d) = m;
    }
    return out;
  };
  auto apply = [&](const std::vector<Matrix<S>>& blocks, const Rows& src, const Vec& bias, Rows& rows,
                   Vec& merged_bias) {
    rows.resize(num_groups * d, src.cols());
    if (bias.size()) merged_bias.resize(num_groups * d);
    for (Index g = 0; g < num_groups; ++g) {
      rows.middleRows(g * d, d).noalias() =
          blocks[static_cast<std::size_t>(g)] * src.middleRows(g * k * d, k * d);
      if (bias.size())
        merged_bias.segment(g * d, d).noalias() =
            blocks[static_cast<std::size_t>(g)] * bias.segment(g * k * d, k * d);
    }
  };
  // Validate both mixings before any work; the mean for whatever has none.
  const auto key_blocks = mixing.key.empty() ? std::vector<Matrix<S>>() : stacked(mixing.key, "key");
  const auto value_blocks = mixing.value.empty() ? std::vector<Matrix<S>>() : stacked(mixing.value, "value");
  AttentionWeights<S> out = mixing.key.empty() || mixing.value.empty() ? merge_to_gqa(w, num_groups)
                                                                       : detail::gqa_shell(w, num_groups);
  if (!key_blocks.empty()) apply(key_blocks, w.k, w.k_bias, out.k, out.k_bias);
  if (!value_blocks.empty()) apply(value_blocks, w.v, w.v_bias, out.v, out.v_bias);
  detail::check_no_overflow<S>("merge_to_gqa", out.k, out.v, out.k_bias, out.v_bias);
  return out;
}

/// @brief The mixing matrices of a merge weighting for an (aligned) layer.
///
/// OutputAware: values by output_metrics(@p aligned); QueryAware: keys by @p key_metrics (from
/// query_metrics()); Full: both; Mean: neither.
/// @param value_metrics output_metrics(@p aligned) when the caller has them already (empty: computed here if
/// needed)
/// @throws invalid_argument when QueryAware/Full has no key metrics, or for inconsistent sizes
template <class S>
MergeMixing<S> merge_mixing(const AttentionWeights<S>& aligned, Index num_groups, const MergeOptions& options,
                            const std::vector<Matrix<S>>& key_metrics = {},
                            const std::vector<Matrix<S>>& value_metrics = {}) {
  MergeMixing<S> mix;
  const bool values =
      options.weighting == MergeWeighting::OutputAware || options.weighting == MergeWeighting::Full;
  const bool keys =
      options.weighting == MergeWeighting::QueryAware || options.weighting == MergeWeighting::Full;
  if (values)
    mix.value = mixing_from_metrics(value_metrics.empty() ? output_metrics(aligned) : value_metrics,
                                    num_groups, options.ridge);
  if (keys) {
    HEADALIGN_CHECK(!key_metrics.empty(),
                    "merge_mixing: query-aware key merging needs query statistics (query_metrics())");
    HEADALIGN_CHECK(
        static_cast<Index>(key_metrics.size()) == aligned.num_kv_heads,
        "merge_mixing: " << key_metrics.size() << " key metrics for " << aligned.num_kv_heads << " KV heads");
    mix.key = mixing_from_metrics(key_metrics, num_groups, options.ridge);
  }
  return mix;
}

}  // namespace headalign

#endif  // HEADALIGN_MERGE_AWARE_HPP
