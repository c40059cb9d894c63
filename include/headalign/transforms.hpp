/// @file transforms.hpp
/// @brief Attention weights in Hugging Face layout, and folding head permutations and rotations into them.
///
/// Head h of an MHA layer computes, for token rows x (n × hidden),
/// \f$ Q_h = x W_{q,h}^\top + b_{q,h} \f$, \f$ K_h = x W_{k,h}^\top + b_{k,h} \f$,
/// \f$ V_h = x W_{v,h}^\top + b_{v,h} \f$ and contributes
/// \f$ \mathrm{softmax}(\mathrm{rope}(Q_h)\,\mathrm{rope}(K_h)^\top/\sqrt d)\, V_h\, W_{o,h}^\top \f$
/// to the output, where \f$ W_{o,h} \f$ are columns [h·d, (h+1)·d) of \f$ W_o \f$.
/// Replacing \f$ W_{k,h} \leftarrow R_h^\top W_{k,h} \f$ and \f$ W_{q,h} \leftarrow R_h^\top W_{q,h} \f$
/// multiplies \f$ Q_h, K_h \f$ on the right by an orthogonal \f$ R_h \f$, which leaves
/// \f$ Q_h K_h^\top \f$ unchanged — and, when \f$ R_h \f$ commutes with RoPE (block rotations per
/// RoPE plane, `Alignment::Rope`), so is the RoPE score. Replacing
/// \f$ W_{v,h} \leftarrow S_h^\top W_{v,h} \f$ and \f$ W_{o,h} \leftarrow W_{o,h} S_h \f$ leaves
/// \f$ V_h W_{o,h}^\top \f$ unchanged. Permuting heads consistently in q, k, v and o permutes
/// the terms of the sum over heads. So the aligned layer computes exactly the same function
/// (Sec. 3.2 of arXiv 2412.20677), while its heads' keys and values \f$ X_h R_h \f$ now lie in a
/// common frame and can be averaged.
#ifndef HEADALIGN_TRANSFORMS_HPP
#define HEADALIGN_TRANSFORMS_HPP

#include "config.hpp"
#include "detail/blas.hpp"
#include "detail/numeric.hpp"
#include "rope.hpp"

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace headalign {

/// @brief The four projections of one attention layer in Hugging Face `nn.Linear` layout.
///
/// Every weight is `[out_features, in_features]`, row-major. Query head h owns rows
/// [h·d, (h+1)·d) of `q` and columns [h·d, (h+1)·d) of `o`; KV head j owns rows [j·d, (j+1)·d)
/// of `k` and `v`. Query head h reads KV head h / (num_heads / num_kv_heads) (Hugging Face
/// `repeat_kv`). Biases have size 0 when the model has none (Llama), or q/k/v biases (Qwen2),
/// or all four (BERT).
template <class S>
struct AttentionWeights {
  using Scalar = S;
  using Rows = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

  Index num_heads = 0, num_kv_heads = 0, head_dim = 0;
  Rows q, k, v, o;                     ///< q [H·d, hidden], k and v [Hkv·d, hidden], o [hidden, H·d]
  Vec q_bias, k_bias, v_bias, o_bias;  ///< size 0 when the model has none

  /// The model's hidden size (input features of q, k, v; output features of o).
  Index hidden_size() const { return q.cols(); }
  /// Query heads per KV head.
  Index group_size() const { return num_kv_heads > 0 ? num_heads / num_kv_heads : 0; }

  /// The same layer in scalar T (e.g. float weights converted in double).
  template <class T>
  AttentionWeights<T> cast() const {
    AttentionWeights<T> w;
    w.num_heads = num_heads;
    w.num_kv_heads = num_kv_heads;
    w.head_dim = head_dim;
    w.q = q.template cast<T>();
    w.k = k.template cast<T>();
    w.v = v.template cast<T>();
    w.o = o.template cast<T>();
    w.q_bias = q_bias.template cast<T>();
    w.k_bias = k_bias.template cast<T>();
    w.v_bias = v_bias.template cast<T>();
    w.o_bias = o_bias.template cast<T>();
    return w;
  }

  /// @brief Checks every shape, the head counts and that all values are finite.
  /// @throws invalid_argument naming the first inconsistent field
  void validate() const {
    HEADALIGN_CHECK(num_heads > 0 && num_kv_heads > 0 && head_dim > 0,
                    "AttentionWeights: num_heads (" << num_heads << "), num_kv_heads (" << num_kv_heads
                                                    << ") and head_dim (" << head_dim
                                                    << ") must be positive");
    HEADALIGN_CHECK(num_heads % num_kv_heads == 0, "AttentionWeights: num_heads ("
                                                       << num_heads << ") is not divisible by num_kv_heads ("
                                                       << num_kv_heads << ")");
    const Index hidden = q.cols();
    HEADALIGN_CHECK(hidden > 0, "AttentionWeights: q has no columns (hidden size 0)");
    auto check_shape = [&](const Rows& m, Index rows, Index cols, const char* name) {
      HEADALIGN_CHECK(m.rows() == rows && m.cols() == cols,
                      "AttentionWeights: " << name << " is " << m.rows() << " × " << m.cols() << ", expected "
                                           << rows << " × " << cols);
      detail::check_finite(m, name);
    };
    check_shape(q, num_heads * head_dim, hidden, "q");
    check_shape(k, num_kv_heads * head_dim, hidden, "k");
    check_shape(v, num_kv_heads * head_dim, hidden, "v");
    check_shape(o, hidden, num_heads * head_dim, "o");
    auto check_bias = [&](const Vec& b, Index size, const char* name) {
      HEADALIGN_CHECK(b.size() == 0 || b.size() == size, "AttentionWeights: " << name << " has " << b.size()
                                                                              << " entries, expected 0 or "
                                                                              << size);
      detail::check_finite(b, name);
    };
    check_bias(q_bias, num_heads * head_dim, "q_bias");
    check_bias(k_bias, num_kv_heads * head_dim, "k_bias");
    check_bias(v_bias, num_kv_heads * head_dim, "v_bias");
    check_bias(o_bias, hidden, "o_bias");
  }
};

namespace detail {

/// Throws unless every matrix is d × d, finite and orthogonal to within √ε·d (an empty list means
/// identities).
template <class S>
void check_rotations(const std::vector<Matrix<S>>& r, Index n, Index d, const char* what) {
  if (r.empty()) return;
  HEADALIGN_CHECK(static_cast<Index>(r.size()) == n,
                  what << ": " << r.size() << " matrices for " << n << " heads");
  const double tol =
      std::sqrt(static_cast<double>(std::numeric_limits<S>::epsilon())) * static_cast<double>(d);
  for (std::size_t p = 0; p < r.size(); ++p) {
    HEADALIGN_CHECK(r[p].rows() == d && r[p].cols() == d, what << "[" << p << "] is " << r[p].rows() << " × "
                                                               << r[p].cols() << ", expected " << d << " × "
                                                               << d);
    detail::check_finite(r[p], what);
    const double err =
        static_cast<double>((r[p].transpose() * r[p] - Matrix<S>::Identity(d, d)).cwiseAbs().maxCoeff());
    HEADALIGN_CHECK(err <= tol, what << "[" << p << "] is not orthogonal (max |RᵀR − I| = " << err << ")");
  }
}

}  // namespace detail

/// @brief Permutes the heads of an MHA layer and folds key and value rotations into its weights.
///
/// New head p is old head `order[p]`. With \f$ R_p \f$ = `key_rotations[p]` and \f$ S_p \f$ =
/// `value_rotations[p]` (d × d, orthogonal):
/// \f$ W_{q,p} \leftarrow R_p^\top W_{q,\mathrm{order}[p]} \f$, \f$ W_{k,p} \leftarrow R_p^\top
/// W_{k,\mathrm{order}[p]} \f$, \f$ W_{v,p} \leftarrow S_p^\top W_{v,\mathrm{order}[p]} \f$, \f$ W_{o}[:,p]
/// \leftarrow W_o[:,\mathrm{order}[p]]\, S_p \f$, and the q/k/v biases likewise (\f$ b \leftarrow R_p^\top b
/// \f$); the o bias is unchanged. The new head p's keys are then \f$ K_{\mathrm{order}[p]} R_p \f$ — a
/// GpaResult's rotations map heads into their group's common frame exactly in this sense.
///
/// The layer computes the same function afterwards provided each key rotation commutes with the
/// model's positional encoding: any orthogonal R without RoPE (BERT), block rotations per RoPE
/// plane with it (`Alignment::Rope`, see is_rope_compatible()). Values take any orthogonal S.
///
/// @param order a permutation of the heads (empty = identity)
/// @param key_rotations one d × d orthogonal matrix per new head (empty = identities)
/// @param value_rotations one d × d orthogonal matrix per new head (empty = identities)
/// @throws invalid_argument for a GQA layer (num_kv_heads ≠ num_heads), inconsistent shapes,
///         a non-permutation, non-orthogonal or non-finite rotations, or a result that overflows
///         S; @p w is unchanged then.
template <class S>
void apply_alignment(AttentionWeights<S>& w, const std::vector<Index>& order,
                     const std::vector<Matrix<S>>& key_rotations,
                     const std::vector<Matrix<S>>& value_rotations) {
  w.validate();
  const Index h = w.num_heads, d = w.head_dim;
  HEADALIGN_CHECK(w.num_kv_heads == h, "apply_alignment: the layer already has "
                                           << w.num_kv_heads << " KV heads for " << h
                                           << " query heads; alignment needs MHA");
  std::vector<Index> perm = order;
  if (perm.empty())
    for (Index p = 0; p < h; ++p) perm.push_back(p);
  detail::check_permutation(perm, h, "apply_alignment");
  detail::check_rotations(key_rotations, h, d, "apply_alignment: key_rotations");
  detail::check_rotations(value_rotations, h, d, "apply_alignment: value_rotations");

  using Rows = typename AttentionWeights<S>::Rows;
  using Vec = typename AttentionWeights<S>::Vec;
  // Exact identities (e.g. Alignment::None) are copies, not products.
  std::vector<char> key_identity(static_cast<std::size_t>(h), 1),
      value_identity(static_cast<std::size_t>(h), 1);
  for (std::size_t p = 0; p < key_rotations.size(); ++p) key_identity[p] = key_rotations[p].isIdentity(0);
  for (std::size_t p = 0; p < value_rotations.size(); ++p)
    value_identity[p] = value_rotations[p].isIdentity(0);
  // Rows of head block p of a [H·d, in] weight ← Rᵀ · (rows of head block order[p]).
  auto transform_rows = [&](const Rows& src, const std::vector<Matrix<S>>& rot,
                            const std::vector<char>& identity) {
    Rows out(src.rows(), src.cols());
    for (Index p = 0; p < h; ++p) {
      const auto from = src.middleRows(perm[static_cast<std::size_t>(p)] * d, d);
      if (identity[static_cast<std::size_t>(p)])
        out.middleRows(p * d, d) = from;
      else  // Rᵀ · from: R's column-major storage read row-major is Rᵀ
        detail::gemm_row_major<S>(d, src.cols(), d, rot[static_cast<std::size_t>(p)].data(), d, from.data(),
                                  src.cols(), false, out.data() + p * d * src.cols(), src.cols());
    }
    return out;
  };
  auto transform_bias = [&](const Vec& src, const std::vector<Matrix<S>>& rot,
                            const std::vector<char>& identity) {
    if (src.size() == 0) return Vec();
    Vec out(src.size());
    for (Index p = 0; p < h; ++p) {
      const auto from = src.segment(perm[static_cast<std::size_t>(p)] * d, d);
      if (identity[static_cast<std::size_t>(p)])
        out.segment(p * d, d) = from;
      else
        out.segment(p * d, d).noalias() = rot[static_cast<std::size_t>(p)].transpose() * from;
    }
    return out;
  };
  Rows o(w.o.rows(), w.o.cols());
  for (Index p = 0; p < h; ++p) {
    const auto from = w.o.middleCols(perm[static_cast<std::size_t>(p)] * d, d);
    if (value_identity[static_cast<std::size_t>(p)])
      o.middleCols(p * d, d) = from;
    else  // from · R, with R given as the transpose of its row-major reading
      detail::gemm_row_major<S>(w.o.rows(), d, d, from.data(), w.o.cols(),
                                value_rotations[static_cast<std::size_t>(p)].data(), d, true,
                                o.data() + p * d, o.cols());
  }
  // Everything is computed before anything is assigned: no half-transformed layer on error.
  Rows q = transform_rows(w.q, key_rotations, key_identity),
       k = transform_rows(w.k, key_rotations, key_identity),
       v = transform_rows(w.v, value_rotations, value_identity);
  Vec qb = transform_bias(w.q_bias, key_rotations, key_identity),
      kb = transform_bias(w.k_bias, key_rotations, key_identity),
      vb = transform_bias(w.v_bias, value_rotations, value_identity);
  detail::check_no_overflow<S>("apply_alignment", q, k, v, o, qb, kb, vb);
  w.q.swap(q);
  w.k.swap(k);
  w.v.swap(v);
  w.o.swap(o);
  w.q_bias.swap(qb);
  w.k_bias.swap(kb);
  w.v_bias.swap(vb);
}

/// @brief Whether @p r commutes with RoPE of the given pairing: block-diagonal on the rotary
/// planes with a proper 2 × 2 rotation (a −b; b a) per plane, and no coupling between rotary
/// and non-rotary dimensions (the non-rotary block may be any orthogonal matrix).
/// @param tolerance maximum absolute deviation from that structure
template <class D>
bool is_rope_compatible(const Eigen::MatrixBase<D>& r, const RopeSpec& rope, double tolerance = 1e-6) {
  const Index d = r.rows();
  if (r.cols() != d) return false;
  const Index rd = rotary_dims(rope, d);
  const auto planes = rope_planes(rope, d);
  std::vector<Index> plane_of(static_cast<std::size_t>(d), -1);
  for (std::size_t p = 0; p < planes.size(); ++p) {
    plane_of[static_cast<std::size_t>(planes[p].first)] = static_cast<Index>(p);
    plane_of[static_cast<std::size_t>(planes[p].second)] = static_cast<Index>(p);
  }
  for (Index j = 0; j < d; ++j)
    for (Index i = 0; i < d; ++i) {
      const bool ri = i < rd, rj = j < rd;
      const bool allowed =
          (!ri && !rj) ||
          (ri && rj && plane_of[static_cast<std::size_t>(i)] == plane_of[static_cast<std::size_t>(j)]);
      if (!allowed && std::abs(static_cast<double>(r(i, j))) > tolerance) return false;
    }
  for (const auto& p : planes) {
    const double a = static_cast<double>(r(p.first, p.first)), b = static_cast<double>(r(p.second, p.first));
    if (std::abs(a - static_cast<double>(r(p.second, p.second))) > tolerance ||
        std::abs(b + static_cast<double>(r(p.first, p.second))) > tolerance)
      return false;
  }
  return true;
}

}  // namespace headalign

#endif  // HEADALIGN_TRANSFORMS_HPP
