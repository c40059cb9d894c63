/// @file gate_mixture.hpp
/// @brief The gated mixture of fine-tuning (arXiv 2412.20677, Sec. 3.4): every original KV head
/// is \f$ z_h \cdot \mathrm{head} + (1 - z_h) \cdot \mathrm{group} \f$ with a gate z_h per head
/// (hard_concrete.hpp draws the gates), on weights or on activations.
#ifndef HEADALIGN_GATE_MIXTURE_HPP
#define HEADALIGN_GATE_MIXTURE_HPP

#include "detail/numeric.hpp"
#include "transforms.hpp"

#include <vector>

namespace headalign {

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
                                                   << h << " × " << d << ", hidden " << mha.hidden_size()
                                                   << ")");
  HEADALIGN_CHECK(mha.k_bias.size() == 0 ? gqa.k_bias.size() == 0 : gqa.k_bias.size() == g * d,
                  "gated_weights: k biases of the MHA and GQA layers do not correspond");
  HEADALIGN_CHECK(mha.v_bias.size() == 0 ? gqa.v_bias.size() == 0 : gqa.v_bias.size() == g * d,
                  "gated_weights: v biases of the MHA and GQA layers do not correspond");
  HEADALIGN_CHECK(key_gates.size() == h && value_gates.size() == h,
                  "gated_weights: " << key_gates.size() << " key and " << value_gates.size()
                                    << " value gates for " << h << " KV heads");
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
      out.k_bias.segment(j * d, d) =
          zk * mha.k_bias.segment(j * d, d) + (S(1) - zk) * gqa.k_bias.segment(grp * d, d);
    if (out.v_bias.size())
      out.v_bias.segment(j * d, d) =
          zv * mha.v_bias.segment(j * d, d) + (S(1) - zv) * gqa.v_bias.segment(grp * d, d);
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
Matrix<typename DA::Scalar> gate_mix(const Eigen::MatrixBase<DA>& per_head,
                                     const Eigen::MatrixBase<DB>& per_group,
                                     const Eigen::DenseBase<DZ>& gates, Index head_dim) {
  using S = typename DA::Scalar;
  HEADALIGN_CHECK(head_dim > 0 && per_head.cols() % head_dim == 0 && per_group.cols() % head_dim == 0,
                  "gate_mix: " << per_head.cols() << " and " << per_group.cols()
                               << " columns are not multiples of head_dim (" << head_dim << ")");
  const Index h = per_head.cols() / head_dim, g = per_group.cols() / head_dim;
  HEADALIGN_CHECK(g > 0 && h % g == 0,
                  "gate_mix: " << h << " heads are not divisible into " << g << " groups");
  HEADALIGN_CHECK(per_group.rows() == per_head.rows(), "gate_mix: " << per_head.rows()
                                                                    << " rows of heads but "
                                                                    << per_group.rows() << " rows of groups");
  HEADALIGN_CHECK(gates.size() == h, "gate_mix: " << gates.size() << " gates for " << h << " heads");
  Matrix<S> out(per_head.rows(), per_head.cols());
  for (Index j = 0; j < h; ++j) {
    const S z = static_cast<S>(gates.derived().coeff(j));
    out.middleCols(j * head_dim, head_dim) =
        z * per_head.middleCols(j * head_dim, head_dim) +
        (S(1) - z) * per_group.middleCols((j / (h / g)) * head_dim, head_dim);
  }
  return out;
}

}  // namespace headalign

#endif  // HEADALIGN_GATE_MIXTURE_HPP
