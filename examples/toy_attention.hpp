// A small LLaMA-style attention layer for the examples: q/k/v projections, RoPE (half split),
// causal softmax, GQA by repeat_kv, output projection — the forward pass of an inference engine,
// with a hook on the projections where the engine would collect calibration statistics.
#ifndef HEADALIGN_EXAMPLES_TOY_ATTENTION_HPP
#define HEADALIGN_EXAMPLES_TOY_ATTENTION_HPP

#include <headalign/rope.hpp>
#include <headalign/transforms.hpp>

#include <Eigen/QR>

#include <cmath>
#include <functional>
#include <limits>
#include <random>

namespace toy {

using headalign::Index;
using Mat = headalign::Matrix<double>;
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Weights = headalign::AttentionWeights<double>;

/// Called with the row-major projection outputs of a batch (n × H·d queries, n × Hkv·d keys and
/// values), pre-RoPE, as an engine's forward pass has them.
using ProjectionHook = std::function<void(const RowMat& q, const RowMat& k, const RowMat& v)>;

inline Mat gaussian(Index rows, Index cols, std::mt19937_64& rng, double stddev = 1.0) {
  std::normal_distribution<double> n(0.0, stddev);
  Mat m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m(i, j) = n(rng);
  return m;
}

/// An MHA layer whose heads come in `sources` families: every head is a randomly rotated (RoPE
/// block rotation for q/k, any orthogonal for v/o) noisy copy of its family's head — the
/// redundancy that aligning before merging exploits.
inline Weights redundant_layer(Index heads, Index d, Index hidden, Index sources, double noise, std::mt19937_64& rng) {
  Weights w;
  w.num_heads = w.num_kv_heads = heads;
  w.head_dim = d;
  const double s = 1.0 / std::sqrt(static_cast<double>(hidden));
  w.q.resize(heads * d, hidden);
  w.k.resize(heads * d, hidden);
  w.v.resize(heads * d, hidden);
  w.o.resize(hidden, heads * d);
  std::vector<Mat> q0, k0, v0;
  for (Index c = 0; c < sources; ++c) {
    q0.push_back(gaussian(d, hidden, rng, s));
    k0.push_back(gaussian(d, hidden, rng, s));
    v0.push_back(gaussian(d, hidden, rng, s));
  }
  for (Index h = 0; h < heads; ++h) {
    const Index c = (h * 3 + 1) % sources;
    // A random rotation per RoPE plane (commutes with RoPE) for q and k …
    Mat rk = Mat::Identity(d, d);
    std::uniform_real_distribution<double> angle(0, 2 * M_PI);
    for (const auto& p : headalign::rope_planes({}, d)) {
      const double a = angle(rng);
      rk(p.first, p.first) = rk(p.second, p.second) = std::cos(a);
      rk(p.first, p.second) = -std::sin(a);
      rk(p.second, p.first) = std::sin(a);
    }
    // … and any orthogonal matrix for v (o gets its inverse: the head's output is unchanged).
    Eigen::HouseholderQR<Mat> qr(gaussian(d, d, rng));
    const Mat rv = qr.householderQ();
    w.q.middleRows(h * d, d) = rk * (q0[static_cast<std::size_t>(c)] + noise * gaussian(d, hidden, rng, s));
    w.k.middleRows(h * d, d) = rk * (k0[static_cast<std::size_t>(c)] + noise * gaussian(d, hidden, rng, s));
    w.v.middleRows(h * d, d) = rv * (v0[static_cast<std::size_t>(c)] + noise * gaussian(d, hidden, rng, s));
    w.o.middleCols(h * d, d) = gaussian(hidden, d, rng, s);
  }
  return w;
}

/// The layer's output for the token rows x (n × hidden) of one sequence, RoPE at positions 0 … n−1.
inline Mat forward(const Weights& w, const Mat& x, const ProjectionHook& hook = {}) {
  const Index n = x.rows(), d = w.head_dim, per = w.num_heads / w.num_kv_heads;
  const RowMat q = x * w.q.transpose(), k = x * w.k.transpose(), v = x * w.v.transpose();
  if (hook) hook(q, k, v);
  Mat ctx(n, w.num_heads * d);
  for (Index h = 0; h < w.num_heads; ++h) {
    const Index kv = h / per;
    Mat qh = q.middleCols(h * d, d), kh = k.middleCols(kv * d, d);
    for (Index t = 0; t < n; ++t) {
      qh.row(t) = headalign::apply_rope(qh.row(t), static_cast<double>(t));
      kh.row(t) = headalign::apply_rope(kh.row(t), static_cast<double>(t));
    }
    Mat s = qh * kh.transpose() / std::sqrt(static_cast<double>(d));
    for (Index t = 0; t < n; ++t) {
      const double mx = s.row(t).head(t + 1).maxCoeff();
      double sum = 0;
      for (Index j = 0; j < n; ++j) {
        s(t, j) = j <= t ? std::exp(s(t, j) - mx) : 0.0;
        sum += s(t, j);
      }
      s.row(t) /= sum;
    }
    ctx.middleCols(h * d, d) = s * v.middleCols(kv * d, d);
  }
  return ctx * w.o.transpose();
}

/// Hidden states with correlated features (an engine's inputs are not white noise).
inline Mat hidden_states(Index n, Index hidden, const Mat& mixing, std::mt19937_64& rng) {
  return gaussian(n, hidden, rng) * mixing;
}

}  // namespace toy

#endif  // HEADALIGN_EXAMPLES_TOY_ATTENTION_HPP
