// Numerical edge cases of the whole pipeline: dead heads, duplicated heads, rank-deficient and
// near-singular Grams, extreme magnitudes in float, a single calibration token, groups of one
// head. Every case gives finite, deterministic results or a clear error — never NaN in a layer.
#include <headalign/pipeline.hpp>

#include "attention_ref.hpp"
#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <limits>

using namespace headalign;
using headalign::test::gaussian;
using headalign::test::projections;
using headalign::test::random_layer;

namespace {

template <class S>
bool same_layer(const AttentionWeights<S>& a, const AttentionWeights<S>& b) {
  return a.q == b.q && a.k == b.k && a.v == b.v && a.o == b.o && a.k_bias == b.k_bias && a.v_bias == b.v_bias;
}

// Calibrates on x, plans and converts with every merge weighting and both criteria; checks that
// every output is finite and that a second run gives the same bits.
template <class S>
void check_pipeline(const AttentionWeights<S>& w, const Matrix<double>& x, Index groups, const char* what) {
  CAPTURE(what, groups);
  for (bool cos : {true, false}) {
    CAPTURE(cos);
    auto run = [&] {
      HeadGram<S> gk(w.num_heads, w.head_dim, cos), gv(w.num_heads, w.head_dim, cos);
      HeadMoments<S> gq(w.num_heads, w.head_dim);
      const Matrix<double> wd_k = w.k.template cast<double>(), wd_v = w.v.template cast<double>(), wd_q = w.q.template cast<double>();
      gk.add(projections<double>(x, wd_k, w.k_bias.template cast<double>()));
      gv.add(projections<double>(x, wd_v, w.v_bias.template cast<double>()));
      gq.add(projections<double>(x, wd_q, w.q_bias.template cast<double>()));
      PlanOptions po;
      po.num_groups = groups;
      po.metric = cos ? Metric::Cosine : Metric::Distance;
      po.group_by = GroupBy::Joint;
      const LayerPlan<S> plan = plan_layer(gk, gv, po);
      CHECK(plan.similarity.allFinite());
      CHECK(std::isfinite(static_cast<double>(plan.key_error.total)));
      CHECK(std::isfinite(static_cast<double>(plan.value_error.relative())));
      std::vector<AttentionWeights<S>> out;
      for (auto weighting : {MergeWeighting::Mean, MergeWeighting::OutputAware, MergeWeighting::Full}) {
        MergeOptions mo;
        mo.weighting = weighting;
        out.push_back(convert_layer(w, plan, mo, &gq));
        CHECK_NOTHROW(out.back().validate());  // shapes and every tensor finite
        const auto a = assess_merge(gk, gv, w, plan, mo, &gq);
        CHECK(std::isfinite(static_cast<double>(a.value_output.relative())));
        CHECK(std::isfinite(static_cast<double>(a.key_logit.relative())));
      }
      return out;
    };
    const auto first = run(), second = run();
    for (std::size_t i = 0; i < first.size(); ++i) CHECK(same_layer(first[i], second[i]));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("edge cases: dead, duplicated and rank-deficient heads", "[edge]", float, double) {
  using S = TestType;
  std::mt19937_64 rng(31);
  const Index h = 8, d = 4, hidden = 12;
  AttentionWeights<S> w = random_layer<double>(h, d, hidden, true, rng).template cast<S>();
  const Matrix<double> x = gaussian<double>(200, hidden, rng);

  SECTION("dead heads: all-zero keys, values and queries") {
    for (Index head : {Index(1), Index(6)}) {
      w.k.middleRows(head * d, d).setZero();
      w.v.middleRows(head * d, d).setZero();
      w.q.middleRows(head * d, d).setZero();
      w.k_bias.segment(head * d, d).setZero();
      w.v_bias.segment(head * d, d).setZero();
      w.q_bias.segment(head * d, d).setZero();
      w.o.middleCols(head * d, d).setZero();
    }
    check_pipeline(w, x, 4, "dead");
    check_pipeline(w, x, 2, "dead");
  }
  SECTION("a whole group of dead heads") {
    for (Index head = 0; head < h; head += 2) {
      w.k.middleRows(head * d, d).setZero();
      w.v.middleRows(head * d, d).setZero();
      w.k_bias.segment(head * d, d).setZero();
      w.v_bias.segment(head * d, d).setZero();
    }
    check_pipeline(w, x, 2, "dead group");
  }
  SECTION("duplicated heads") {
    for (Index head = 1; head < h; head += 2) {
      w.k.middleRows(head * d, d) = w.k.middleRows((head - 1) * d, d);
      w.v.middleRows(head * d, d) = w.v.middleRows((head - 1) * d, d);
      w.k_bias.segment(head * d, d) = w.k_bias.segment((head - 1) * d, d);
      w.v_bias.segment(head * d, d) = w.v_bias.segment((head - 1) * d, d);
    }
    check_pipeline(w, x, 4, "duplicated");
  }
  SECTION("rank-deficient heads (rank 1 of 4) and near-singular ones") {
    for (Index head = 0; head < h; ++head) {
      const Matrix<double> u = gaussian<double>(d, 1, rng), v = gaussian<double>(1, hidden, rng);
      const double tiny = head % 2 ? 1e-7 : 0.0;
      w.k.middleRows(head * d, d) = (u * v + tiny * gaussian<double>(d, hidden, rng)).template cast<S>();
    }
    w.k_bias.setZero();
    check_pipeline(w, x, 4, "rank-deficient");
  }
  SECTION("fewer calibration tokens than dimensions, and a single token") {
    check_pipeline(w, x.topRows(2), 4, "two tokens");
    check_pipeline(w, x.topRows(1), 2, "one token");
  }
  SECTION("groups of one head, and one group of all heads") {
    check_pipeline(w, x, h, "groups of one");
    check_pipeline(w, x, 1, "one group");
  }
}

TEST_CASE("edge cases: magnitudes from 1e-20 to 1e20 in float", "[edge]") {
  std::mt19937_64 rng(32);
  const Index h = 4, d = 4, hidden = 8;
  for (double scale : {1e-20, 1e-10, 1e10, 1e20}) {
    CAPTURE(scale);
    AttentionWeights<float> w = random_layer<double>(h, d, hidden, false, rng).cast<float>();
    const Matrix<double> x = gaussian<double>(100, hidden, rng) * scale;
    // Row-normalised Grams (cos) accumulate unit vectors: any magnitude works.
    HeadGram<float> gk(h, d, true), gv(h, d, true);
    gk.add(projections<double>(x, w.k.cast<double>(), {}));
    gv.add(projections<double>(x, w.v.cast<double>(), {}));
    PlanOptions po;
    po.num_groups = 2;
    const LayerPlan<float> plan = plan_layer(gk, gv, po);
    CHECK(plan.similarity.allFinite());
    CHECK_NOTHROW(convert_layer(w, plan).validate());
    // Unnormalised float Grams: squares of 1e20 overflow float, so such data are refused with a
    // clear error (and nothing is added); 1e-20 squares to 0 (dead heads), which stays finite.
    HeadGram<float> raw(h, d, false);
    const Matrix<double> keys = projections<double>(x, w.k.cast<double>(), {});
    if (scale > 1e18) {
      CHECK_THROWS_WITH(raw.add(keys), Catch::Contains("overflow"));
      CHECK(raw.tokens() == 0);
      HeadGram<double> wide(h, d, false);  // the advice of the message: accumulate in double
      wide.add(keys);
      CHECK(wide.gram().allFinite());
    } else {
      raw.add(keys);
      CHECK(raw.gram().allFinite());
      HeadGram<float> rv(h, d, false);
      rv.add(projections<double>(x, w.v.cast<double>(), {}));
      po.metric = Metric::Distance;
      const LayerPlan<float> p2 = plan_layer(raw, rv, po);
      CHECK(p2.similarity.allFinite());
      CHECK_NOTHROW(convert_layer(w, p2).validate());
    }
  }
}

TEST_CASE("edge cases: float weights whose products overflow give a clear error, never NaN", "[edge]") {
  // Found by fuzz_convert (fuzz/regressions/convert): finite float weights near 1e30 square past
  // float's range in the output and query metrics; the merge and its assessment used to return
  // Inf/NaN without an error.
  std::mt19937_64 rng(33);
  const Index h = 4, d = 4, hidden = 8;
  AttentionWeights<double> wd = random_layer<double>(h, d, hidden, false, rng);
  wd.o *= 1e30;
  wd.q *= 1e30;
  const AttentionWeights<float> w = wd.cast<float>();
  REQUIRE_NOTHROW(w.validate());  // finite inputs
  const Matrix<double> x = gaussian<double>(50, hidden, rng);
  HeadGram<float> gk(h, d, true), gv(h, d, true);
  gk.add(projections<double>(x, w.k.cast<double>(), {}));
  gv.add(projections<double>(x, w.v.cast<double>(), {}));
  HeadMoments<float> gq(h, d);
  gq.add(projections<double>(x, wd.q, {}).cast<float>().eval() * 1e-30f);  // moments of a representable size
  PlanOptions po;
  po.num_groups = 2;
  const LayerPlan<float> plan = plan_layer(gk, gv, po);
  for (auto weighting : {MergeWeighting::Mean, MergeWeighting::OutputAware, MergeWeighting::Full}) {
    CAPTURE(static_cast<int>(weighting));
    MergeOptions mo;
    mo.weighting = weighting;
    if (weighting == MergeWeighting::Mean) {
      // The mean merge never squares o: the layer converts, only its assessment overflows.
      const AttentionWeights<float> merged = convert_layer(w, plan, mo, &gq);
      CHECK_NOTHROW(merged.validate());
    } else {
      CHECK_THROWS_WITH(convert_layer(w, plan, mo, &gq), Catch::Contains("overflowed float"));
    }
    CHECK_THROWS_WITH(convert_and_assess(gk, gv, w, plan, mo, &gq), Catch::Contains("overflowed float"));
    CHECK_THROWS_AS(assess_merge(gk, gv, w, plan, mo, &gq), invalid_argument);
  }
  // The advice of the message: the same layer in double converts and assesses, finite.
  HeadGram<double> dk(h, d, true), dv(h, d, true);
  dk.add(projections<double>(x, wd.k, {}));
  dv.add(projections<double>(x, wd.v, {}));
  HeadMoments<double> dq(h, d);
  dq.add(projections<double>(x, wd.q, {}));
  const LayerPlan<double> pd = plan_layer(dk, dv, po);
  MergeOptions full;
  full.weighting = MergeWeighting::Full;
  const ConvertedLayer<double> c = convert_and_assess(dk, dv, wd, pd, full, &dq);
  CHECK_NOTHROW(c.merged.validate());
  CHECK(std::isfinite(c.assessment.value_output.relative()));
  CHECK(std::isfinite(c.assessment.key_logit.relative()));
  // apply_alignment refuses a rotation whose result overflows, and leaves the layer unchanged.
  AttentionWeights<float> big = w;
  big.k.setConstant(3e38f);
  const AttentionWeights<float> before = big;
  std::vector<Matrix<float>> rot(static_cast<std::size_t>(h), Matrix<float>::Identity(d, d));
  const float c45 = static_cast<float>(std::sqrt(0.5));
  rot[0].topLeftCorner(2, 2) << c45, -c45, c45, c45;  // (a + b)/√2 of two 3e38 entries ≈ 4.2e38
  CHECK_THROWS_WITH(apply_alignment(big, {}, rot, {}), Catch::Contains("overflowed float"));
  CHECK(same_layer(big, before));
}
