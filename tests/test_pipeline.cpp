// The conversion pipeline end to end on planted data: Gram → similarity → grouping → GPA →
// apply_alignment → merge_to_gqa. Aligned merging error is far below plain mean-pool error and
// equals the error predicted from the Gram before merging.
#include <headalign/pipeline.hpp>

#include "attention_ref.hpp"
#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <algorithm>

using namespace headalign;
using headalign::test::attention_forward;
using headalign::test::gaussian;
using headalign::test::projections;
using headalign::test::random_layer;
using headalign::test::random_orthogonal;
using headalign::test::random_rope_rotation;
using headalign::test::relative_diff;

namespace {

// Σ over query-side KV heads p of mean_t ‖K_p(aligned MHA) − K_{p / (H/g)}(GQA)‖²: the error
// merging actually makes on the tokens x.
template <class S>
double actual_error(const Matrix<S>& x, const typename AttentionWeights<S>::Rows& mha_w,
                    const typename AttentionWeights<S>::Vec& mha_b, const typename AttentionWeights<S>::Rows& gqa_w,
                    const typename AttentionWeights<S>::Vec& gqa_b, Index h, Index g, Index d) {
  const Matrix<S> a = projections<S>(x, mha_w, mha_b), m = projections<S>(x, gqa_w, gqa_b);
  double e = 0;
  for (Index p = 0; p < h; ++p)
    e += static_cast<double>((a.middleCols(p * d, d) - m.middleCols((p / (h / g)) * d, d)).squaredNorm());
  return e / static_cast<double>(x.rows());
}

// An MHA layer whose heads are noisy rotated copies of `groups` sources, shuffled.
template <class S>
AttentionWeights<S> planted_layer(Index groups, Index per, Index d, Index hidden, const RopeSpec& rope, double noise,
                                  std::vector<Index>& label, std::mt19937_64& rng) {
  const Index h = groups * per;
  AttentionWeights<S> w = random_layer<S>(h, d, hidden, true, rng);
  label.resize(static_cast<std::size_t>(h));
  for (Index i = 0; i < h; ++i) label[static_cast<std::size_t>(i)] = i % groups;
  std::shuffle(label.begin(), label.end(), rng);
  std::vector<Matrix<double>> wk, wv, bk, bv;
  for (Index c = 0; c < groups; ++c) {
    wk.push_back(gaussian<double>(d, hidden, rng, 0.3));
    wv.push_back(gaussian<double>(d, hidden, rng, 0.3));
    bk.push_back(gaussian<double>(d, 1, rng, 0.3));
    bv.push_back(gaussian<double>(d, 1, rng, 0.3));
  }
  for (Index j = 0; j < h; ++j) {
    const auto c = static_cast<std::size_t>(label[static_cast<std::size_t>(j)]);
    const Matrix<double> qk = random_rope_rotation<double>(d, rope, rng), qv = random_orthogonal<double>(d, rng);
    w.k.middleRows(j * d, d) = (qk.transpose() * wk[c] + gaussian<double>(d, hidden, rng, 0.3 * noise)).template cast<S>();
    w.v.middleRows(j * d, d) = (qv.transpose() * wv[c] + gaussian<double>(d, hidden, rng, 0.3 * noise)).template cast<S>();
    w.k_bias.segment(j * d, d) = (qk.transpose() * bk[c]).template cast<S>();
    w.v_bias.segment(j * d, d) = (qv.transpose() * bv[c]).template cast<S>();
  }
  return w;
}

}  // namespace

TEMPLATE_TEST_CASE("end to end on planted heads: aligned merge error ≪ mean-pool error, equal to the prediction",
                   "[pipeline]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(606);
  const Index groups = 2, per = 4, h = groups * per, d = 8, hidden = 24, n = 2000;
  for (auto pairing : {RopeSpec::Pairing::HalfSplit, RopeSpec::Pairing::Interleaved}) {
    CAPTURE(static_cast<int>(pairing));
    const RopeSpec rope{pairing, 0};
    std::vector<Index> label;
    const AttentionWeights<S> w = planted_layer<S>(groups, per, d, hidden, rope, 0.1, label, rng);
    const Matrix<S> x = gaussian<S>(n, hidden, rng);
    HeadGram<S> gk(h, d), gv(h, d);
    gk.add(projections<S>(x, w.k, w.k_bias));
    gv.add(projections<S>(x, w.v, w.v_bias));

    PlanOptions opt;
    opt.num_groups = groups;
    opt.metric = Metric::Distance;
    opt.rope = rope;
    opt.group_by = GroupBy::Joint;
    const LayerPlan<S> plan = plan_layer(gk, gv, opt);
    // Grouped back exactly.
    REQUIRE(plan.grouping.groups.size() == static_cast<std::size_t>(groups));
    for (const auto& grp : plan.grouping.groups)
      for (Index i : grp) CHECK(label[static_cast<std::size_t>(i)] == label[static_cast<std::size_t>(grp[0])]);
    CHECK(plan.converged());
    for (const auto& r : plan.key_rotations) CHECK(is_rope_compatible(r, rope, 1e-4));

    const AttentionWeights<S> gqa = convert_layer(w, plan);
    AttentionWeights<S> aligned = w;
    apply_alignment(aligned, plan.order, plan.key_rotations, plan.value_rotations);
    const double key_err = actual_error<S>(x, aligned.k, aligned.k_bias, gqa.k, gqa.k_bias, h, groups, d);
    const double value_err = actual_error<S>(x, aligned.v, aligned.v_bias, gqa.v, gqa.v_bias, h, groups, d);
    const double rel_tol = std::is_same<S, float>::value ? 2e-3 : 1e-9;
    CHECK(std::abs(static_cast<double>(plan.key_error.total) - key_err) <= rel_tol * key_err);
    CHECK(std::abs(static_cast<double>(plan.value_error.total) - value_err) <= rel_tol * value_err);

    // The plain mean-pool baseline: adjacent heads, no alignment; its prediction is exact too.
    PlanOptions base;
    base.num_groups = groups;
    base.group_by = GroupBy::None;
    base.key_alignment = base.value_alignment = Alignment::None;
    const LayerPlan<S> plain = plan_layer(gk, gv, base);
    const AttentionWeights<S> gqa_plain = convert_layer(w, plain);
    CHECK(gqa_plain.k == merge_to_gqa(w, groups).k);
    const double plain_key_err = actual_error<S>(x, w.k, w.k_bias, gqa_plain.k, gqa_plain.k_bias, h, groups, d);
    CHECK(std::abs(static_cast<double>(plain.key_error.total) - plain_key_err) <= rel_tol * plain_key_err);
    INFO("key error: aligned " << key_err << ", mean-pool " << plain_key_err << "; value error aligned " << value_err
                               << ", mean-pool " << static_cast<double>(plain.value_error.total));
    CHECK(key_err < 0.05 * plain_key_err);
    CHECK(value_err < 0.05 * static_cast<double>(plain.value_error.total));
    CHECK(plan.key_error.relative() < 0.05);

    if (std::is_same<S, double>::value) {
      // The attention output follows: the aligned GQA layer stays much closer to the MHA.
      const Matrix<S> xs = gaussian<S>(12, hidden, rng);
      const test::AttentionOptions ao{true, rope, true};
      const Matrix<S> ref = attention_forward(w, xs, ao);
      CHECK(relative_diff(attention_forward(gqa, xs, ao), ref) < 0.3 * relative_diff(attention_forward(gqa_plain, xs, ao), ref));
    }
  }
}

TEST_CASE("predicted merge error: weighted means and hand-computed two-head case", "[pipeline][merge]") {
  std::mt19937_64 rng(707);
  const Index d = 3, n = 50;
  const Matrix<double> x = gaussian<double>(n, 2 * d, rng);
  HeadGram<double> g(2, d);
  g.add(x);
  // Two heads, weights (1, 3): m = (x0 + 3 x1)/4; errors mean ‖x0 − m‖², mean ‖x1 − m‖².
  Vector<double> wts(2);
  wts << 1, 3;
  const Matrix<double> x0 = x.leftCols(d), x1 = x.rightCols(d), m = (x0 + 3 * x1) / 4;
  const auto e = predicted_merge_error(g, {{0, 1}}, {}, wts);
  CHECK(std::abs(e.per_head(0) - (x0 - m).squaredNorm() / n) < 1e-12);
  CHECK(std::abs(e.per_head(1) - (x1 - m).squaredNorm() / n) < 1e-12);
  CHECK(std::abs(e.per_group(0) - e.total) < 1e-15);
  CHECK(std::abs(e.energy - (x0.squaredNorm() + x1.squaredNorm()) / n) < 1e-12);
  // With a rotation of head 1.
  const Matrix<double> r = random_orthogonal<double>(d, rng);
  const auto er = predicted_merge_error(g, {{0, 1}}, {Matrix<double>::Identity(d, d), r});
  const Matrix<double> mr = (x0 + x1 * r) / 2;
  CHECK(std::abs(er.total - ((x0 - mr).squaredNorm() + (x1 * r - mr).squaredNorm()) / n) < 1e-12);
  // Heads left out of every group are ignored; singletons cost nothing.
  const auto single = predicted_merge_error(g, {{1}});
  CHECK(single.total == 0);
  CHECK(single.per_head(0) == 0);
  CHECK(head_energies(g)(1) == Approx(x1.squaredNorm() / n).epsilon(1e-12));
}

TEST_CASE("plan_layer rejects inconsistent Grams and group counts", "[pipeline][errors]") {
  std::mt19937_64 rng(808);
  HeadGram<double> a(4, 4), b(4, 2), empty(4, 4);
  a.add(gaussian<double>(20, 16, rng));
  b.add(gaussian<double>(20, 8, rng));
  PlanOptions o;
  o.num_groups = 2;
  CHECK_THROWS_AS(plan_layer(a, b, o), invalid_argument);
  CHECK_THROWS_AS(plan_layer(a, empty, o), invalid_argument);
  o.num_groups = 3;
  CHECK_THROWS_AS(plan_layer(a, a, o), invalid_argument);
  o.num_groups = 0;
  CHECK_THROWS_AS(plan_layer(a, a, o), invalid_argument);
}
