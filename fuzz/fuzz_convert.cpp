// Fuzz target: the conversion pipeline on tiny layers — Grams from activations or from the
// weights, plan_layer (similarity, grouping, GPA), convert_and_assess (alignment, merge weighting)
// — in float and double, with magnitudes from 2^-128 to 2^127 and, in raw mode, arbitrary float
// bit patterns (NaN, Inf, subnormals). The contract: a documented exception, or a finite layer of
// the right shape with orthogonal rotations; with the mean merge, every KV head is the mean of its
// group's aligned heads.
//
// Input: 8 parameter bytes, then the payload that fills activations and weights (cycled; none =
// zeros). Byte 0: heads {1,2,3,4,6,8}; 1: KV heads (a divisor, or ≥ 250: any count 0–4); 2: head
// dim {1,2,3,4,6,8}; 3: RoPE pairing, key alignment, value alignment, group-by, metric, scalar;
// 4: merge weighting, data-free, biases, grouping method, partial rotary, raw floats;
// 5: tokens 1–12; 6: hidden size 1–10; 7: scale exponent − 128.
#include <headalign/headalign.hpp>

#include "fuzz_common.hpp"

#include <cmath>
#include <cstring>
#include <vector>

using namespace headalign;

namespace {

class Payload {
 public:
  Payload(const std::uint8_t* data, std::size_t size, bool raw, double scale) : data_(data), size_(size), raw_(raw), scale_(scale) {}
  double next() {
    if (size_ == 0) return 0.0;
    if (raw_) {
      std::uint8_t b[4];
      for (auto& x : b) x = data_[pos_++ % size_];
      float f;
      std::memcpy(&f, b, 4);
      return static_cast<double>(f);
    }
    return static_cast<double>(static_cast<std::int8_t>(data_[pos_++ % size_])) / 16.0 * scale_;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_, pos_ = 0;
  bool raw_;
  double scale_;
};

template <class M>
void fill(M& m, Payload& p) {
  using S = typename M::Scalar;
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = static_cast<S>(p.next());
}

template <class S>
void run(const std::uint8_t* par, const std::uint8_t* data, std::size_t size) {
  static const Index heads_of[] = {1, 2, 3, 4, 6, 8}, dims_of[] = {1, 2, 3, 4, 6, 8};
  const Index h = heads_of[par[0] % 6], d = dims_of[par[2] % 6];
  std::vector<Index> divisors;
  for (Index g = 1; g <= h; ++g)
    if (h % g == 0) divisors.push_back(g);
  const Index groups = par[1] >= 250 ? par[1] % 5 : divisors[par[1] % divisors.size()];
  const std::uint8_t f = par[3], m = par[4];
  static const Alignment alignments[] = {Alignment::None, Alignment::Orthogonal, Alignment::Rotation, Alignment::Rope};
  static const GroupBy group_bys[] = {GroupBy::Value, GroupBy::Key, GroupBy::Joint, GroupBy::None};
  static const MergeWeighting weightings[] = {MergeWeighting::Mean, MergeWeighting::OutputAware, MergeWeighting::QueryAware,
                                              MergeWeighting::Full};
  static const GroupingOptions::Method methods[] = {GroupingOptions::Method::LocalSearch, GroupingOptions::Method::Exact,
                                                    GroupingOptions::Method::HillClimb, GroupingOptions::Method::LocalSearch};
  const bool data_free = m & 4, biases = m & 8, raw = m & 128;
  const Index tokens = 1 + par[5] % 12, hidden = 1 + par[6] % 10;
  Payload p(data, size, raw, std::ldexp(1.0, static_cast<int>(par[7]) - 128));

  PlanOptions o;
  o.num_groups = groups;
  o.rope.pairing = (f & 1) ? RopeSpec::Pairing::Interleaved : RopeSpec::Pairing::HalfSplit;
  o.rope.rotary_dims = (m & 64) ? 2 * (d / 4) : 0;
  o.key_alignment = alignments[(f >> 1) & 3];
  o.value_alignment = (f & 8) ? Alignment::None : Alignment::Orthogonal;
  o.group_by = group_bys[(f >> 4) & 3];
  o.metric = (f & 64) ? Metric::Distance : Metric::Cosine;
  o.grouping.method = methods[(m >> 4) & 3];
  o.grouping.restarts = 2;
  o.grouping.iterations = 40;
  o.grouping.steps = 80;
  o.gpa.max_iterations = 20;
  MergeOptions merge;
  merge.weighting = weightings[m & 3];

  AttentionWeights<S> w;
  w.num_heads = w.num_kv_heads = h;
  w.head_dim = d;
  w.q.resize(h * d, hidden);
  w.k.resize(h * d, hidden);
  w.v.resize(h * d, hidden);
  w.o.resize(hidden, h * d);
  fill(w.q, p);
  fill(w.k, p);
  fill(w.v, p);
  fill(w.o, p);
  if (biases) {
    w.q_bias.resize(h * d);
    w.k_bias.resize(h * d);
    w.v_bias.resize(h * d);
    w.o_bias.resize(hidden);
    for (auto* b : {&w.q_bias, &w.k_bias, &w.v_bias, &w.o_bias}) fill(*b, p);
  }

  const bool cos = o.metric == Metric::Cosine;
  HeadGram<S> gk(h, d, cos), gv(h, d, cos);
  HeadMoments<S> gq(h, d);
  if (data_free) {
    gk = HeadGram<S>::from_weights(w.k, h, d);
    gv = HeadGram<S>::from_weights(w.v, h, d);
    gq = HeadMoments<S>::from_weights(w.q, h, d);
  } else {
    Matrix<S> x(tokens, h * d);
    fill(x, p);
    gk.add(x);
    fill(x, p);
    gv.add(x);
    fill(x, p);
    gq.add(x);
  }
  const bool with_queries = merge.weighting == MergeWeighting::QueryAware || merge.weighting == MergeWeighting::Full;

  const LayerPlan<S> plan = plan_layer(gk, gv, o);
  const ConvertedLayer<S> c = convert_and_assess(gk, gv, w, plan, merge, with_queries ? &gq : nullptr);

  // The contract: finite, the right shape, orthogonal rotations.
  fuzz::check_finite(plan.similarity, "the similarity");
  const AttentionWeights<S>& out = c.merged;
  if (out.num_heads != h || out.num_kv_heads != groups || out.head_dim != d || out.q.rows() != h * d ||
      out.k.rows() != groups * d || out.v.rows() != groups * d || out.o.cols() != h * d || out.q.cols() != hidden)
    fuzz::finding("the merged layer has the wrong shape");
  fuzz::check_finite(out.q, "merged q");
  fuzz::check_finite(out.k, "merged k");
  fuzz::check_finite(out.v, "merged v");
  fuzz::check_finite(out.o, "merged o");
  for (const auto* b : {&out.q_bias, &out.k_bias, &out.v_bias, &out.o_bias}) fuzz::check_finite(*b, "a merged bias");
  const double eps = std::numeric_limits<S>::epsilon();
  for (const auto* rs : {&plan.key_rotations, &plan.value_rotations})
    for (const auto& r : *rs) {
      fuzz::check_finite(r, "a rotation");
      if ((r.transpose() * r - Matrix<S>::Identity(d, d)).cwiseAbs().maxCoeff() > 1e3 * eps)
        fuzz::finding("a rotation is not orthogonal");
    }
  for (const auto* e : {&c.assessment.value_output, &c.assessment.value_output_mean})
    if (!std::isfinite(static_cast<double>(e->total))) fuzz::finding("a predicted output error is not finite");

  // The mean merge: KV head g is the mean of its group's aligned heads (new order: contiguous).
  if (merge.weighting == MergeWeighting::Mean) {
    const Index k = h / groups;
    for (Index g = 0; g < groups; ++g) {
      Matrix<S> sum = Matrix<S>::Zero(d, hidden);
      for (Index u = 0; u < k; ++u) sum += c.aligned.k.middleRows((g * k + u) * d, d) / static_cast<S>(k);
      const Matrix<S> got = out.k.middleRows(g * d, d);
      const double scale = std::max<double>(1e-300, static_cast<double>(c.aligned.k.cwiseAbs().maxCoeff()));
      if (static_cast<double>((got - sum).cwiseAbs().maxCoeff()) > 1e2 * eps * scale * static_cast<double>(k))
        fuzz::finding("a mean-merged key head is not the mean of its group");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::uint8_t par[8] = {};
  std::memcpy(par, data, std::min<std::size_t>(size, 8));
  const std::uint8_t* payload = size > 8 ? data + 8 : nullptr;
  const std::size_t payload_size = size > 8 ? size - 8 : 0;
  if (par[3] & 128)
    fuzz::expect_contract([&] { run<float>(par, payload, payload_size); });
  else
    fuzz::expect_contract([&] { run<double>(par, payload, payload_size); });
  return 0;
}
