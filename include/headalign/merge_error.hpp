/// @file merge_error.hpp
/// @brief The error a merge will make, predicted from the Gram before anything is merged: in
/// the keys' and values' own units (mean merges), or in any metric (matrix-weighted merges, e.g.
/// the attention logits or the layer's output).
#ifndef HEADALIGN_MERGE_ERROR_HPP
#define HEADALIGN_MERGE_ERROR_HPP

#include "detail/blas.hpp"
#include "detail/numeric.hpp"
#include "gram.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace headalign {

namespace detail {

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
    HEADALIGN_CHECK(r.rows() == d && r.cols() == d, "predicted_merge_error: a rotation is "
                                                        << r.rows() << " × " << r.cols() << ", expected " << d
                                                        << " × " << d);
  HeadSet heads(h, "predicted_merge_error");
  for (const auto& grp : groups) {
    HEADALIGN_CHECK(!grp.empty(), "predicted_merge_error: a group is empty");
    heads.add(grp, "in the groups");
  }
}

}  // namespace detail

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
          detail::gemm<S>(g.block(grp[t], grp[u]), rotations[static_cast<std::size_t>(grp[u])], S(0),
                          product);
          ctu = product.cwiseProduct(rotations[static_cast<std::size_t>(grp[t])]).sum();
        }
        c(static_cast<Index>(t), static_cast<Index>(u)) = c(static_cast<Index>(u), static_cast<Index>(t)) =
            ctu;
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
                                    const std::vector<Matrix<S>>& rotations,
                                    const std::vector<Matrix<S>>& mixing,
                                    const std::vector<Matrix<S>>& metrics) {
  const Index h = g.num_heads(), d = g.head_dim();
  detail::check_merge_groups(g, groups, rotations);
  for (const auto* v : {&mixing, &metrics}) {
    HEADALIGN_CHECK(
        v->empty() || static_cast<Index>(v->size()) == h,
        "predicted_merge_error: " << v->size() << " mixing or metric matrices for " << h << " heads");
    for (const auto& m : *v)
      HEADALIGN_CHECK(m.rows() == d && m.cols() == d, "predicted_merge_error: a mixing or metric matrix is "
                                                          << m.rows() << " × " << m.cols() << ", expected "
                                                          << d << " × " << d);
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
      return mixing.empty() ? Matrix<S>(Matrix<S>::Identity(d, d) / static_cast<S>(k))
                            : mixing[static_cast<std::size_t>(grp[t])];
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
      const S e =
          metrics.empty() ? c.trace() : (metrics[static_cast<std::size_t>(grp[t])].cwiseProduct(c)).sum();
      const S energy = metrics.empty()
                           ? diag[t].trace()
                           : (metrics[static_cast<std::size_t>(grp[t])].cwiseProduct(diag[t])).sum();
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

#endif  // HEADALIGN_MERGE_ERROR_HPP
