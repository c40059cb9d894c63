// Output-aware value merging and query-aware key merging: the closed forms are optimal, reduce to
// the mean when the heads' metrics agree, beat the mean on attention output when they differ, and
// their predicted errors equal what the merged layer does on the calibration tokens.
#include <headalign/pipeline.hpp>

#include "attention_ref.hpp"
#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <numeric>

using namespace headalign;
using headalign::test::AttentionOptions;
using headalign::test::attention_forward;
using headalign::test::gaussian;
using headalign::test::projections;
using headalign::test::random_layer;
using headalign::test::random_orthogonal;
using headalign::test::random_rope_rotation;

namespace {

using Mat = Matrix<double>;

// ‖a − b‖ / ‖b‖ for any two dense matrices or vectors of the same shape.
template <class A, class B>
double rel(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  return (a - b).norm() / std::max(b.norm(), 1e-300);
}

// A random symmetric positive semi-definite d × d matrix of rank r with a spread of scales.
Mat random_psd(Index d, Index r, std::mt19937_64& rng) {
  const Mat f = gaussian<double>(d, r, rng);
  return f * f.transpose();
}

// Σ_u tr((V_u − V)ᵀ (A_u + λI) (V_u − V)): the objective the closed form minimises.
double weighted_objective(const std::vector<Mat>& a, double lambda, const std::vector<Mat>& v, const Mat& merged) {
  double j = 0;
  for (std::size_t u = 0; u < a.size(); ++u) {
    const Mat diff = v[u] - merged;
    const Mat reg = a[u] + lambda * Mat::Identity(a[u].rows(), a[u].cols());
    j += (diff.transpose() * reg * diff).trace();
  }
  return j;
}

// Key and value Grams and query moments of a layer's projections of the tokens x.
template <class S>
struct Calibrated {
  HeadGram<S> keys, values;
  HeadMoments<S> queries;
  Calibrated(const AttentionWeights<double>& w, const Mat& x)
      : keys(w.num_heads, w.head_dim), values(w.num_heads, w.head_dim), queries(w.num_heads, w.head_dim) {
    keys.add(projections<double>(x, w.k, w.k_bias));
    values.add(projections<double>(x, w.v, w.v_bias));
    queries.add(projections<double>(x, w.q, w.q_bias));
  }
};

// Attention output difference ‖f(gqa) − f(mha)‖² / ‖f(mha)‖² on x.
double output_error(const AttentionWeights<double>& mha, const AttentionWeights<double>& gqa, const Mat& x,
                    const AttentionOptions& opt) {
  const Mat a = attention_forward(mha, x, opt), b = attention_forward(gqa, x, opt);
  return (a - b).squaredNorm() / a.squaredNorm();
}

}  // namespace

TEST_CASE("mixing_from_metrics: the closed form is the optimum of its weighted objective", "[merge_aware]") {
  std::mt19937_64 rng(11);
  const Index d = 6, hidden = 9, k = 3;
  for (double ridge : {0.0, 1e-3, 0.5}) {
    for (Index rank : {d, Index(2)}) {
      if (ridge == 0.0 && rank < d) continue;  // a singular sum needs the ridge
      std::vector<Mat> a, v;
      for (Index u = 0; u < k; ++u) {
        a.push_back(random_psd(d, rank, rng) * std::pow(10.0, static_cast<double>(u)));
        v.push_back(gaussian<double>(d, hidden, rng));
      }
      const auto mix = mixing_from_metrics(a, 1, ridge);
      REQUIRE(mix.size() == static_cast<std::size_t>(k));
      Mat sum = Mat::Zero(d, d), merged = Mat::Zero(d, hidden);
      for (Index u = 0; u < k; ++u) {
        sum += mix[static_cast<std::size_t>(u)];
        merged += mix[static_cast<std::size_t>(u)] * v[static_cast<std::size_t>(u)];
      }
      CHECK((sum - Mat::Identity(d, d)).cwiseAbs().maxCoeff() < 1e-10);  // Σ M_u = I: constants are kept
      Mat trace_sum = Mat::Zero(d, d);
      for (const auto& m : a) trace_sum += m;
      const double lambda = ridge * trace_sum.trace() / static_cast<double>(k * d);
      // The gradient −2 Σ_u Ã_u (V_u − V_g) vanishes …
      Mat grad = Mat::Zero(d, hidden), scale = Mat::Zero(d, hidden);
      for (Index u = 0; u < k; ++u) {
        const Mat reg = a[static_cast<std::size_t>(u)] + lambda * Mat::Identity(d, d);
        grad += reg * (v[static_cast<std::size_t>(u)] - merged);
        scale += (reg * v[static_cast<std::size_t>(u)]).cwiseAbs();
      }
      CHECK(grad.cwiseAbs().maxCoeff() < 1e-10 * scale.maxCoeff());
      // … and no perturbation lowers the objective.
      const double best = weighted_objective(a, lambda, v, merged);
      for (int t = 0; t < 40; ++t) {
        const double eps = std::pow(10.0, -1 - t % 5);
        CHECK(weighted_objective(a, lambda, v, merged + eps * gaussian<double>(d, hidden, rng)) >= best * (1 - 1e-12));
      }
      // The mean is worse unless the metrics agree.
      Mat mean = (v[0] + v[1] + v[2]) / 3.0;
      CHECK(weighted_objective(a, lambda, v, mean) > best);
    }
  }
}

TEST_CASE("mixing_from_metrics: equal metrics and all-zero metrics give the mean", "[merge_aware]") {
  std::mt19937_64 rng(12);
  const Index d = 5;
  const Mat a = random_psd(d, 3, rng);
  for (const Mat& m : {a, Mat(Mat::Zero(d, d))}) {
    const auto mix = mixing_from_metrics(std::vector<Mat>{m, m, m, m}, 2, 1e-3);
    for (const auto& x : mix) CHECK((x - Mat::Identity(d, d) / 2.0).cwiseAbs().maxCoeff() < 1e-12);
  }
  CHECK_THROWS_AS(mixing_from_metrics(std::vector<Mat>{a, a}, 1, 0.0), invalid_argument);  // rank 3 of 5, no ridge
  CHECK_THROWS_AS(mixing_from_metrics(std::vector<Mat>{a, a, a}, 2), invalid_argument);
  CHECK_THROWS_AS(mixing_from_metrics(std::vector<Mat>{a, a}, 1, -1.0), invalid_argument);
  Mat bad = a;
  bad(0, 0) = std::nan("");
  CHECK_THROWS_AS(mixing_from_metrics(std::vector<Mat>{a, bad}, 1), invalid_argument);
}

TEST_CASE("merge_to_gqa with mixing matrices: rows and biases are Σ M_u K_u, empty mixing is the mean", "[merge_aware]") {
  std::mt19937_64 rng(13);
  const Index h = 4, d = 3, hidden = 7;
  const AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
  MergeMixing<double> mix;
  for (Index u = 0; u < h; ++u) {
    mix.key.push_back(gaussian<double>(d, d, rng));
    mix.value.push_back(gaussian<double>(d, d, rng));
  }
  const auto out = merge_to_gqa(w, 2, mix);
  for (Index g = 0; g < 2; ++g)
    for (Index r = 0; r < d; ++r)
      for (Index c = 0; c < hidden; ++c) {
        double k = 0, v = 0;
        for (Index u = 2 * g; u < 2 * g + 2; ++u)
          for (Index s = 0; s < d; ++s) {
            k += mix.key[static_cast<std::size_t>(u)](r, s) * w.k(u * d + s, c);
            v += mix.value[static_cast<std::size_t>(u)](r, s) * w.v(u * d + s, c);
          }
        CHECK(out.k(g * d + r, c) == Approx(k).epsilon(1e-12));
        CHECK(out.v(g * d + r, c) == Approx(v).epsilon(1e-12));
      }
  const Matrix<double> kb = mix.key[2] * w.k_bias.segment(2 * d, d) + mix.key[3] * w.k_bias.segment(3 * d, d);
  CHECK((out.k_bias.segment(d, d) - kb).cwiseAbs().maxCoeff() < 1e-12);
  CHECK(out.q == w.q);
  CHECK(out.o == w.o);
  const auto mean = merge_to_gqa(w, 2, MergeMixing<double>{});
  CHECK(mean.k == merge_to_gqa(w, 2).k);
  mix.key.pop_back();
  CHECK_THROWS_AS(merge_to_gqa(w, 2, mix), invalid_argument);
}

TEST_CASE("rope_average equals the average over planes' angles, for both pairings and partial rotary", "[merge_aware]") {
  std::mt19937_64 rng(14);
  const Index d = 8;
  const Mat sigma = random_psd(d, d, rng);
  for (auto pairing : {RopeSpec::Pairing::HalfSplit, RopeSpec::Pairing::Interleaved})
    for (Index rotary : {Index(0), Index(4), Index(6)}) {
      RopeSpec spec;
      spec.pairing = pairing;
      spec.rotary_dims = rotary;
      const Index r = rotary == 0 ? d : rotary;
      // Plane p turns by 2π f_p j / J with distinct integer frequencies f_p = p + 1: the discrete
      // average over j = 0 … J−1 of every cos/sin of (f_p ± f_q) and 2 f_p vanishes exactly.
      const int J = 64;
      Mat avg = Mat::Zero(d, d);
      for (int j = 0; j < J; ++j) {
        Mat rot = Mat::Identity(d, d);
        for (Index p = 0; p < r / 2; ++p) {
          const Index a = pairing == RopeSpec::Pairing::HalfSplit ? p : 2 * p;
          const Index b = pairing == RopeSpec::Pairing::HalfSplit ? p + r / 2 : 2 * p + 1;
          const double phi = 2 * M_PI * static_cast<double>((p + 1) * j) / J;
          rot(a, a) = rot(b, b) = std::cos(phi);
          rot(a, b) = -std::sin(phi);
          rot(b, a) = std::sin(phi);
        }
        avg += rot.transpose() * sigma * rot / static_cast<double>(J);
      }
      CHECK((rope_average(sigma, spec) - avg).cwiseAbs().maxCoeff() < 1e-12);
    }
}

TEST_CASE("output-aware values and query-aware keys: lower attention error than the mean where the heads differ",
          "[merge_aware]") {
  std::mt19937_64 rng(15);
  const Index h = 4, d = 4, hidden = 16, n = 48, groups = 2;
  for (bool rope : {false, true}) {
    const AttentionOptions opt{rope, {}, true};
    AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
    // The heads of a group share most of their values and keys, with a head-specific part.
    for (Index u = 0; u < h; ++u) {
      const Index base = (u / 2) * 2;
      w.v.middleRows(u * d, d) = w.v.middleRows(base * d, d) + 0.5 * gaussian<double>(d, hidden, rng, 1 / std::sqrt(16.0));
      w.k.middleRows(u * d, d) = w.k.middleRows(base * d, d) + 0.5 * gaussian<double>(d, hidden, rng, 1 / std::sqrt(16.0));
    }
    const Mat x = gaussian<double>(n, hidden, rng);
    const Mat xc = gaussian<double>(4000, hidden, rng);

    SECTION(std::string("output projections of very different scales") + (rope ? " (RoPE)" : "")) {
      for (Index u = 0; u < h; ++u) w.o.middleCols(u * d, d) *= (u % 2 == 0 ? 8.0 : 0.125);
      MergeOptions mo;
      mo.weighting = MergeWeighting::OutputAware;
      const auto aware = merge_to_gqa(w, groups, merge_mixing(w, groups, mo));
      const auto mean = merge_to_gqa(w, groups);
      const double e_aware = output_error(w, aware, x, opt), e_mean = output_error(w, mean, x, opt);
      INFO("output error: output-aware " << e_aware << ", mean " << e_mean);
      CHECK(e_aware < 0.5 * e_mean);
    }
    SECTION(std::string("equal output projections: the same as the mean") + (rope ? " (RoPE)" : "")) {
      for (Index u = 1; u < h; u += 2) w.o.middleCols(u * d, d) = w.o.middleCols((u - 1) * d, d);
      MergeOptions mo;
      mo.weighting = MergeWeighting::OutputAware;
      const auto aware = merge_to_gqa(w, groups, merge_mixing(w, groups, mo));
      const auto mean = merge_to_gqa(w, groups);
      CHECK(rel(aware.v, mean.v) < 1e-12);
      CHECK(output_error(w, aware, x, opt) == Approx(output_error(w, mean, x, opt)).epsilon(1e-9));
    }
    SECTION(std::string("query energies very different per head and per plane") + (rope ? " (RoPE)" : "")) {
      // Values identical within a group, so only the keys' merge matters.
      for (Index u = 1; u < h; u += 2) {
        w.v.middleRows(u * d, d) = w.v.middleRows((u - 1) * d, d);
        w.v_bias.segment(u * d, d) = w.v_bias.segment((u - 1) * d, d);
      }
      // Head 2g queries strongly, in its first plane; head 2g + 1 barely.
      for (Index u = 0; u < h; ++u) {
        w.q.middleRows(u * d, d) *= (u % 2 == 0 ? 6.0 : 0.05);
        w.q.row(u * d) *= 3.0;
        w.q.row(u * d + d / 2) *= 3.0;
      }
      HeadMoments<double> qm(h, d);
      qm.add(projections<double>(xc, w.q, w.q_bias));
      MergeOptions mo;
      mo.weighting = MergeWeighting::QueryAware;
      const std::optional<RopeSpec> spec = rope ? std::optional<RopeSpec>(RopeSpec{}) : std::nullopt;
      const auto aware = merge_to_gqa(w, groups, merge_mixing(w, groups, mo, query_metrics(qm, h, spec)));
      const auto mean = merge_to_gqa(w, groups);
      const double e_aware = output_error(w, aware, x, opt), e_mean = output_error(w, mean, x, opt);
      INFO("output error: query-aware " << e_aware << ", mean " << e_mean);
      CHECK(e_aware < 0.5 * e_mean);
      // Under RoPE the key metric is isotropic inside every plane.
      if (rope)
        for (const auto& m : query_metrics(qm, h, spec)) {
          CHECK(m(0, 0) == Approx(m(2, 2)).epsilon(1e-14));
          CHECK(m(0, 2) == 0.0);
          CHECK(m(0, 1) == 0.0);
        }
    }
    SECTION(std::string("equal query statistics: the same as the mean") + (rope ? " (RoPE)" : "")) {
      for (Index u = 1; u < h; u += 2) {
        w.q.middleRows(u * d, d) = w.q.middleRows((u - 1) * d, d);
        w.q_bias.segment(u * d, d) = w.q_bias.segment((u - 1) * d, d);
      }
      HeadMoments<double> qm(h, d);
      qm.add(projections<double>(xc, w.q, w.q_bias));
      MergeOptions mo;
      mo.weighting = MergeWeighting::QueryAware;
      const auto aware = merge_to_gqa(w, groups, merge_mixing(w, groups, mo, query_metrics(qm, h)));
      CHECK(rel(aware.k, merge_to_gqa(w, groups).k) < 1e-12);
    }
  }
}

TEST_CASE("convert_layer with query moments: rotated with the keys, equal to merging the aligned layer's own queries",
          "[merge_aware]") {
  std::mt19937_64 rng(16);
  const Index h = 6, d = 4, hidden = 12, groups = 2;
  const RopeSpec spec{RopeSpec::Pairing::Interleaved, 0};
  const AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
  const Mat xc = gaussian<double>(500, hidden, rng);
  const Calibrated<double> cal(w, xc);
  const HeadGram<double>&gk = cal.keys, &gv = cal.values;
  const HeadMoments<double>& qm = cal.queries;
  PlanOptions po;
  po.num_groups = groups;
  po.rope = spec;
  po.metric = Metric::Distance;
  const LayerPlan<double> plan = plan_layer(gk, gv, po);
  REQUIRE(plan.order != std::vector<Index>({0, 1, 2, 3, 4, 5}));  // the test needs a real permutation

  MergeOptions mo;
  mo.weighting = MergeWeighting::Full;
  const auto converted = convert_layer(w, plan, mo, &qm);
  // Independently: align, record the aligned layer's queries, merge with its own metrics.
  AttentionWeights<double> aligned = w;
  apply_alignment(aligned, plan.order, plan.key_rotations, plan.value_rotations);
  HeadMoments<double> qa(h, d);
  qa.add(projections<double>(xc, aligned.q, aligned.q_bias));
  const auto expected = merge_to_gqa(aligned, groups, merge_mixing(aligned, groups, mo, query_metrics(qa, h, spec)));
  CHECK(rel(converted.k, expected.k) < 1e-10);
  CHECK(rel(converted.v, expected.v) < 1e-10);
  CHECK(rel(converted.k_bias, expected.k_bias) < 1e-10);
  // The plain default is the paper's mean.
  CHECK(rel(convert_layer(w, plan).k, merge_to_gqa(aligned, groups).k) < 1e-12);
  CHECK_THROWS_AS(convert_layer(w, plan, mo), invalid_argument);  // query-aware without query moments
  HeadMoments<double> wrong(h, d + 2);
  wrong.add(gaussian<double>(3, h * (d + 2), rng));
  CHECK_THROWS_AS(convert_layer(w, plan, mo, &wrong), invalid_argument);
}

TEST_CASE("predicted output and logit errors equal what the merged layer makes on the calibration tokens",
          "[merge_aware]") {
  std::mt19937_64 rng(17);
  const Index h = 6, d = 4, hidden = 10, groups = 2, n = 300;
  const AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
  const Mat xc = gaussian<double>(n, hidden, rng);
  const Calibrated<double> cal(w, xc);
  const HeadGram<double>&gk = cal.keys, &gv = cal.values;
  const HeadMoments<double>& qm = cal.queries;
  PlanOptions po;
  po.num_groups = groups;
  po.key_alignment = Alignment::Orthogonal;
  const LayerPlan<double> plan = plan_layer(gk, gv, po);
  for (auto weighting : {MergeWeighting::Mean, MergeWeighting::Full}) {
    MergeOptions mo;
    mo.weighting = weighting;
    const auto a = assess_merge(gk, gv, w, plan, mo, &qm);
    const auto gqa = convert_layer(w, plan, mo, &qm);
    AttentionWeights<double> aligned = w;
    apply_alignment(aligned, plan.order, plan.key_rotations, plan.value_rotations);
    // Direct: per token and aligned head p, ‖O_p (v_p − v_g)‖² and (v_p − v_g)… for the keys
    // E_q[(qᵀ(k_p − k_g))²] = (k_p − k_g)ᵀ Σ_q,p (k_p − k_g) with the aligned head's query moments.
    const Mat va = projections<double>(xc, aligned.v, aligned.v_bias), vg = projections<double>(xc, gqa.v, gqa.v_bias);
    const Mat ka = projections<double>(xc, aligned.k, aligned.k_bias), kg = projections<double>(xc, gqa.k, gqa.k_bias);
    const Mat qa = projections<double>(xc, aligned.q, aligned.q_bias);
    double out_err = 0, logit_err = 0;
    for (Index p = 0; p < h; ++p) {
      const Index grp = p / (h / groups);
      const Mat o = aligned.o.middleCols(p * d, d);
      const Mat sq = qa.middleCols(p * d, d).transpose() * qa.middleCols(p * d, d) / static_cast<double>(n);
      for (Index t = 0; t < n; ++t) {
        const Vector<double> dv = (va.row(t).segment(p * d, d) - vg.row(t).segment(grp * d, d)).transpose();
        const Vector<double> dk = (ka.row(t).segment(p * d, d) - kg.row(t).segment(grp * d, d)).transpose();
        out_err += (o * dv).squaredNorm() / static_cast<double>(n);
        logit_err += dk.dot(sq * dk) / static_cast<double>(n);
      }
    }
    // convert_and_assess: the same layer and assessment from one alignment.
    const auto both = convert_and_assess(gk, gv, w, plan, mo, &qm);
    CHECK(both.merged.k == gqa.k);
    CHECK(both.merged.v == gqa.v);
    CHECK(both.aligned.q == aligned.q);
    CHECK(both.aligned.o == aligned.o);
    CHECK(both.assessment.value_output.total == a.value_output.total);
    CHECK(both.assessment.key_logit.total == a.key_logit.total);
    CHECK(both.assessment.value_output_mean.total == a.value_output_mean.total);
    CHECK(a.value_output.total == Approx(out_err).epsilon(1e-9));
    CHECK(a.key_logit.total == Approx(logit_err).epsilon(1e-9));
    if (weighting == MergeWeighting::Full) {
      CHECK(a.value_output.total <= a.value_output_mean.total);
      CHECK(a.key_logit.total <= a.key_logit_mean.total);
    } else {
      CHECK(a.value_output.total == Approx(a.value_output_mean.total).epsilon(1e-12));
    }
  }
  // Identity metrics and the mean reproduce the scalar predicted_merge_error().
  std::vector<Mat> ident(static_cast<std::size_t>(h), Mat::Identity(d, d));
  const auto plain = predicted_merge_error(gv, plan.grouping.groups);
  const auto general = predicted_merge_error(gv, plan.grouping.groups, {}, {}, ident);
  CHECK(general.total == Approx(plain.total).epsilon(1e-12));
  CHECK(general.energy == Approx(plain.energy).epsilon(1e-12));
}

TEST_CASE("HeadMoments: the diagonal Gram blocks, streamed, merged, saved and loaded", "[merge_aware]") {
  std::mt19937_64 rng(18);
  const Index h = 3, d = 5;
  const Mat x = gaussian<double>(40, h * d, rng);
  HeadMoments<double> m(h, d), a(h, d), b(h, d);
  m.add(x);
  a.add(x.topRows(17));
  const Eigen::MatrixXf xf = x.bottomRows(23).cast<float>();
  b.add(xf);
  a.merge(b);
  CHECK(m.tokens() == 40);
  CHECK(a.tokens() == 40);
  for (Index i = 0; i < h; ++i) {
    const Mat direct = x.middleCols(i * d, d).transpose() * x.middleCols(i * d, d);
    CHECK((m.block(i) - direct).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((a.block(i) - direct).cwiseAbs().maxCoeff() < 1e-5);  // 23 rows passed through float
  }
  const Mat wq = gaussian<double>(h * d, 7, rng);
  const auto fw = HeadMoments<double>::from_weights(wq, h, d);
  CHECK((fw.block(1) - wq.middleRows(d, d) * wq.middleRows(d, d).transpose()).cwiseAbs().maxCoeff() < 1e-12);

  Mat bad = x.topRows(3);
  bad(2, h * d - 1) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(m.add(bad), invalid_argument);
  CHECK(m.tokens() == 40);  // nothing added
  CHECK_THROWS_AS(m.add(x.leftCols(h * d - 1)), invalid_argument);
  CHECK_THROWS_AS(m.block(h), invalid_argument);
  CHECK_THROWS_AS(m.merge(HeadMoments<double>(h, d + 1)), invalid_argument);
  // A float accumulator refuses data that could overflow any head, before any head adds.
  HeadMoments<float> mf(h, d);
  Matrix<double> huge = x.topRows(4);
  huge.col(h * d - 1).array() *= 1e20;  // only the last head
  CHECK_THROWS_WITH(mf.add(huge), Catch::Contains("overflow"));
  CHECK(mf.tokens() == 0);
  for (Index i = 0; i < h; ++i) CHECK(mf.block(i).isZero(0));

}

TEST_CASE("aware merging in float agrees with double", "[merge_aware]") {
  std::mt19937_64 rng(19);
  const Index h = 4, d = 4, hidden = 8, groups = 2;
  const AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
  const Mat xc = gaussian<double>(200, hidden, rng);
  const Calibrated<double> cd(w, xc);
  const Calibrated<float> cf(w, xc);
  PlanOptions po;
  po.num_groups = groups;
  po.group_by = GroupBy::None;  // the same plan in both precisions
  MergeOptions mo;
  mo.weighting = MergeWeighting::Full;
  const auto gd = convert_layer(w, plan_layer(cd.keys, cd.values, po), mo, &cd.queries);
  const auto gf = convert_layer(w.cast<float>(), plan_layer(cf.keys, cf.values, po), mo, &cf.queries);
  CHECK(rel(gf.k.cast<double>(), gd.k) < 1e-3);
  CHECK(rel(gf.v.cast<double>(), gd.v) < 1e-3);
}
