// A plain, independent attention layer for the tests: per query head, projections with biases,
// RoPE at the token's position, scaled dot products, causal (or full) softmax, output projection.
// GQA by Hugging Face repeat_kv: query head h reads KV head h / (H / Hkv).
#ifndef HEADALIGN_TEST_ATTENTION_REF_HPP
#define HEADALIGN_TEST_ATTENTION_REF_HPP

#include <headalign/rope.hpp>
#include <headalign/transforms.hpp>

#include "test_util.hpp"

#include <cmath>
#include <limits>
#include <random>

namespace headalign::test {

struct AttentionOptions {
  bool rope = true;
  RopeSpec spec = {};
  bool causal = true;
};

/// Rows of x (n × hidden) through head block `head` of a [heads·d, hidden] projection, plus bias.
template <class S>
Matrix<S> project(const Matrix<S>& x, const typename AttentionWeights<S>::Rows& w,
                  const typename AttentionWeights<S>::Vec& b, Index head, Index d) {
  Matrix<S> y = x * w.middleRows(head * d, d).transpose();
  if (b.size()) y.rowwise() += b.segment(head * d, d).transpose();
  return y;
}

/// Every head's projection of the rows of x, n × (heads·d), biases included: what a calibration run records.
template <class S>
Matrix<S> projections(const Matrix<S>& x, const typename AttentionWeights<S>::Rows& w,
                      const typename AttentionWeights<S>::Vec& b) {
  Matrix<S> y = x * w.transpose();
  if (b.size()) y.rowwise() += b.transpose();
  return y;
}

template <class S>
Matrix<S> attention_forward(const AttentionWeights<S>& w, const Matrix<S>& x, const AttentionOptions& opt = {}) {
  const Index n = x.rows(), d = w.head_dim, per = w.num_heads / w.num_kv_heads;
  Matrix<S> out = Matrix<S>::Zero(n, w.o.rows());
  for (Index h = 0; h < w.num_heads; ++h) {
    const Index kv = h / per;
    Matrix<S> q = project<S>(x, w.q, w.q_bias, h, d), k = project<S>(x, w.k, w.k_bias, kv, d),
              v = project<S>(x, w.v, w.v_bias, kv, d);
    if (opt.rope)
      for (Index t = 0; t < n; ++t) {
        q.row(t) = apply_rope(q.row(t), static_cast<double>(t), opt.spec);
        k.row(t) = apply_rope(k.row(t), static_cast<double>(t), opt.spec);
      }
    Matrix<S> scores = q * k.transpose() / std::sqrt(static_cast<S>(d));
    for (Index t = 0; t < n; ++t) {
      const Index last = opt.causal ? t : n - 1;
      S mx = -std::numeric_limits<S>::infinity();
      for (Index j = 0; j <= last; ++j) mx = std::max(mx, scores(t, j));
      S sum = 0;
      for (Index j = 0; j < n; ++j) {
        scores(t, j) = j <= last ? std::exp(scores(t, j) - mx) : S(0);
        sum += scores(t, j);
      }
      scores.row(t) /= sum;
    }
    out += (scores * v) * w.o.middleCols(h * d, d).transpose();
  }
  if (w.o_bias.size()) out.rowwise() += w.o_bias.transpose();
  return out;
}

/// A random MHA layer (num_kv_heads = num_heads) with all four biases when @p biases.
template <class S>
AttentionWeights<S> random_layer(Index heads, Index d, Index hidden, bool biases, std::mt19937_64& rng) {
  AttentionWeights<S> w;
  w.num_heads = w.num_kv_heads = heads;
  w.head_dim = d;
  const double s = 1.0 / std::sqrt(static_cast<double>(hidden));
  w.q = gaussian<S>(heads * d, hidden, rng, s);
  w.k = gaussian<S>(heads * d, hidden, rng, s);
  w.v = gaussian<S>(heads * d, hidden, rng, s);
  w.o = gaussian<S>(hidden, heads * d, rng, s);
  if (biases) {
    w.q_bias = gaussian<S>(heads * d, 1, rng, 0.5);
    w.k_bias = gaussian<S>(heads * d, 1, rng, 0.5);
    w.v_bias = gaussian<S>(heads * d, 1, rng, 0.5);
    w.o_bias = gaussian<S>(hidden, 1, rng, 0.5);
  }
  return w;
}

/// Relative Frobenius difference ‖a − b‖ / ‖b‖.
template <class S>
double relative_diff(const Matrix<S>& a, const Matrix<S>& b) {
  return static_cast<double>((a - b).norm() / b.norm());
}

}  // namespace headalign::test

#endif
