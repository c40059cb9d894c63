// Weight transforms and GQA merging: computational invariance of apply_alignment (RoPE pairings,
// partial rotary, biases, causal softmax), exact merging of rotated copies, the gated mixture,
// weighted means, and the bad-input contract.
#include <headalign/gpa.hpp>
#include <headalign/gram.hpp>
#include <headalign/grouping.hpp>
#include <headalign/gate_mixture.hpp>
#include <headalign/merge.hpp>
#include <headalign/merge_error.hpp>
#include <headalign/transforms.hpp>

#include "attention_ref.hpp"
#include "test_util.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>

using namespace headalign;
using headalign::test::AttentionOptions;
using headalign::test::attention_forward;
using headalign::test::gaussian;
using headalign::test::projections;
using headalign::test::random_layer;
using headalign::test::random_orthogonal;
using headalign::test::random_rope_rotation;
using headalign::test::relative_diff;

namespace {

std::vector<Index> random_permutation(Index n, std::mt19937_64& rng) {
  std::vector<Index> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), Index(0));
  std::shuffle(p.begin(), p.end(), rng);
  return p;
}

// Block rotation on the rotary planes and any orthogonal matrix on the non-rotary dimensions.
Matrix<double> rope_compatible_rotation(Index d, const RopeSpec& rope, std::mt19937_64& rng) {
  Matrix<double> r = random_rope_rotation<double>(d, rope, rng);
  const Index rd = rotary_dims(rope, d);
  if (rd < d) r.bottomRightCorner(d - rd, d - rd) = random_orthogonal<double>(d - rd, rng);
  return r;
}

}  // namespace

TEST_CASE("apply_alignment keeps the layer's function: RoPE pairings, partial rotary, biases, causal softmax",
          "[transforms]") {
  std::mt19937_64 rng(101);
  const Index h = 6, d = 8, hidden = 20, n = 9;
  const Matrix<double> x = gaussian<double>(n, hidden, rng);
  struct Case {
    bool rope;
    RopeSpec spec;
  };
  const Case cases[] = {{true, {RopeSpec::Pairing::HalfSplit, 0}},
                        {true, {RopeSpec::Pairing::Interleaved, 0}},
                        {true, {RopeSpec::Pairing::HalfSplit, 4}},
                        {true, {RopeSpec::Pairing::Interleaved, 6}},
                        {false, {}}};
  for (const Case& c : cases) {
    for (bool biases : {false, true}) {
      CAPTURE(c.rope, static_cast<int>(c.spec.pairing), c.spec.rotary_dims, biases);
      const AttentionOptions opt{c.rope, c.spec, c.rope};
      AttentionWeights<double> w = random_layer<double>(h, d, hidden, biases, rng);
      const Matrix<double> before = attention_forward(w, x, opt);
      const auto order = random_permutation(h, rng);
      std::vector<Matrix<double>> rk, rv;
      for (Index p = 0; p < h; ++p) {
        rk.push_back(c.rope ? rope_compatible_rotation(d, c.spec, rng) : random_orthogonal<double>(d, rng));
        rv.push_back(random_orthogonal<double>(d, rng));
        if (c.rope) CHECK(is_rope_compatible(rk.back(), c.spec, 1e-12));
      }
      AttentionWeights<double> aligned = w;
      apply_alignment(aligned, order, rk, rv);
      CHECK(relative_diff(attention_forward(aligned, x, opt), before) < 1e-12);
      // New head p is old head order[p] with keys K R_p and values V S_p (biases included).
      for (Index p = 0; p < h; ++p) {
        const Index old = order[static_cast<std::size_t>(p)];
        const Matrix<double> k_new = test::project<double>(x, aligned.k, aligned.k_bias, p, d);
        const Matrix<double> k_old = test::project<double>(x, w.k, w.k_bias, old, d) * rk[static_cast<std::size_t>(p)];
        CHECK((k_new - k_old).cwiseAbs().maxCoeff() < 1e-12);
        const Matrix<double> v_new = test::project<double>(x, aligned.v, aligned.v_bias, p, d);
        const Matrix<double> v_old = test::project<double>(x, w.v, w.v_bias, old, d) * rv[static_cast<std::size_t>(p)];
        CHECK((v_new - v_old).cwiseAbs().maxCoeff() < 1e-12);
      }
      if (c.rope) {
        // The test can fail: a general orthogonal key rotation does not commute with RoPE.
        std::vector<Matrix<double>> bad;
        for (Index p = 0; p < h; ++p) bad.push_back(random_orthogonal<double>(d, rng));
        CHECK_FALSE(is_rope_compatible(bad[0], c.spec));
        AttentionWeights<double> wrong = w;
        apply_alignment(wrong, order, bad, rv);
        CHECK(relative_diff(attention_forward(wrong, x, opt), before) > 1e-3);
      }
    }
  }
}

TEST_CASE("apply_alignment in float matches double, and empty order/rotations mean identity", "[transforms]") {
  std::mt19937_64 rng(7);
  const Index h = 4, d = 6, hidden = 10;
  AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
  const auto order = random_permutation(h, rng);
  std::vector<Matrix<double>> rk, rv;
  for (Index p = 0; p < h; ++p) {
    rk.push_back(random_orthogonal<double>(d, rng));
    rv.push_back(random_orthogonal<double>(d, rng));
  }
  AttentionWeights<float> wf;
  wf.num_heads = wf.num_kv_heads = h;
  wf.head_dim = d;
  wf.q = w.q.cast<float>();
  wf.k = w.k.cast<float>();
  wf.v = w.v.cast<float>();
  wf.o = w.o.cast<float>();
  wf.q_bias = w.q_bias.cast<float>();
  wf.k_bias = w.k_bias.cast<float>();
  wf.v_bias = w.v_bias.cast<float>();
  wf.o_bias = w.o_bias.cast<float>();
  std::vector<Matrix<float>> rkf, rvf;
  for (Index p = 0; p < h; ++p) {
    rkf.push_back(rk[static_cast<std::size_t>(p)].cast<float>());
    rvf.push_back(rv[static_cast<std::size_t>(p)].cast<float>());
  }
  AttentionWeights<double> wd = w;
  apply_alignment(wd, order, rk, rv);
  apply_alignment(wf, order, rkf, rvf);
  CHECK((wf.q.cast<double>() - wd.q).cwiseAbs().maxCoeff() < 1e-5);
  CHECK((wf.o.cast<double>() - wd.o).cwiseAbs().maxCoeff() < 1e-5);
  CHECK((wf.v_bias.cast<double>() - wd.v_bias).cwiseAbs().maxCoeff() < 1e-5);

  AttentionWeights<double> same = w;
  apply_alignment(same, {}, {}, {});
  CHECK(same.q == w.q);
  CHECK(same.k == w.k);
  CHECK(same.o == w.o);
  CHECK(same.v_bias == w.v_bias);
}

TEST_CASE("rotated copies inside groups merge exactly after alignment, not before", "[merge]") {
  std::mt19937_64 rng(202);
  const Index groups = 2, per = 3, h = groups * per, d = 8, hidden = 16, n = 11, calib = 400;
  for (bool rope : {true, false}) {
    CAPTURE(rope);
    const RopeSpec spec{};
    const Alignment key_al = rope ? Alignment::Rope : Alignment::Orthogonal;
    AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
    // Head j of group c: W_k,j = Q_jᵀ W_k,c and b_k,j = Q_jᵀ b_k,c (keys K_c Q_j), same for values.
    for (Index c = 0; c < groups; ++c) {
      const Matrix<double> wk = gaussian<double>(d, hidden, rng, 0.3), wv = gaussian<double>(d, hidden, rng, 0.3);
      const Matrix<double> bk = gaussian<double>(d, 1, rng, 0.3), bv = gaussian<double>(d, 1, rng, 0.3);
      for (Index j = c * per; j < (c + 1) * per; ++j) {
        const Matrix<double> qk = rope ? rope_compatible_rotation(d, spec, rng) : random_orthogonal<double>(d, rng);
        const Matrix<double> qv = random_orthogonal<double>(d, rng);
        w.k.middleRows(j * d, d) = qk.transpose() * wk;
        w.k_bias.segment(j * d, d) = qk.transpose() * bk;
        w.v.middleRows(j * d, d) = qv.transpose() * wv;
        w.v_bias.segment(j * d, d) = qv.transpose() * bv;
      }
    }
    const AttentionOptions opt{rope, spec, true};
    const Matrix<double> x = gaussian<double>(n, hidden, rng);
    const Matrix<double> mha = attention_forward(w, x, opt);

    // Calibrate on other tokens, align every group, fold, merge.
    const Matrix<double> xc = gaussian<double>(calib, hidden, rng);
    HeadGram<double> gk(h, d), gv(h, d);
    gk.add(projections<double>(xc, w.k, w.k_bias));
    gv.add(projections<double>(xc, w.v, w.v_bias));
    std::vector<Matrix<double>> rk, rv;
    for (Index c = 0; c < groups; ++c) {
      std::vector<Index> heads;
      for (Index j = c * per; j < (c + 1) * per; ++j) heads.push_back(j);
      const auto ak = align_group(gk, heads, key_al, spec), av = align_group(gv, heads, Alignment::Orthogonal);
      rk.insert(rk.end(), ak.rotations.begin(), ak.rotations.end());
      rv.insert(rv.end(), av.rotations.begin(), av.rotations.end());
    }
    AttentionWeights<double> aligned = w;
    apply_alignment(aligned, {}, rk, rv);
    const AttentionWeights<double> gqa = merge_to_gqa(aligned, groups);
    REQUIRE(gqa.num_kv_heads == groups);
    REQUIRE(gqa.k.rows() == groups * d);
    CHECK(relative_diff(attention_forward(gqa, x, opt), mha) < 1e-9);
    // Merging the same heads without alignment changes the function.
    CHECK(relative_diff(attention_forward(merge_to_gqa(w, groups), x, opt), mha) > 0.05);
    // The predicted merge error is zero after alignment, large before.
    std::vector<std::vector<Index>> grp = group_contiguous(h, groups).groups;
    CHECK(predicted_merge_error(gk, grp, rk).relative() < 1e-12);
    CHECK(predicted_merge_error(gk, grp).relative() > 0.1);
  }
}

TEST_CASE("merge_to_gqa: plain and weighted means, biases, GQA → fewer groups, repeat_kv", "[merge]") {
  std::mt19937_64 rng(303);
  const Index h = 8, d = 4, hidden = 12;
  const AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
  const AttentionWeights<double> g4 = merge_to_gqa(w, 4);
  CHECK(g4.num_heads == h);
  CHECK(g4.q == w.q);
  CHECK(g4.o == w.o);
  CHECK(g4.o_bias == w.o_bias);
  for (Index g = 0; g < 4; ++g) {
    const Matrix<double> mean = 0.5 * (w.k.middleRows(2 * g * d, d) + w.k.middleRows((2 * g + 1) * d, d));
    CHECK((g4.k.middleRows(g * d, d) - mean).cwiseAbs().maxCoeff() < 1e-15);
    const Vector<double> vb = 0.5 * (w.v_bias.segment(2 * g * d, d) + w.v_bias.segment((2 * g + 1) * d, d));
    CHECK((g4.v_bias.segment(g * d, d) - vb).cwiseAbs().maxCoeff() < 1e-15);
  }
  // Merging twice (8 → 4 → 2) equals merging once (8 → 2) for equal weights.
  const AttentionWeights<double> g2 = merge_to_gqa(g4, 2), g2_direct = merge_to_gqa(w, 2);
  CHECK((g2.k - g2_direct.k).cwiseAbs().maxCoeff() < 1e-15);
  CHECK((g2.v_bias - g2_direct.v_bias).cwiseAbs().maxCoeff() < 1e-15);
  // repeat_kv: the GQA layer equals an MHA layer whose KV head j is the group's copy.
  AttentionWeights<double> expanded = w;
  for (Index j = 0; j < h; ++j) {
    expanded.k.middleRows(j * d, d) = g2.k.middleRows((j / 4) * d, d);
    expanded.v.middleRows(j * d, d) = g2.v.middleRows((j / 4) * d, d);
    expanded.k_bias.segment(j * d, d) = g2.k_bias.segment((j / 4) * d, d);
    expanded.v_bias.segment(j * d, d) = g2.v_bias.segment((j / 4) * d, d);
  }
  const Matrix<double> x = gaussian<double>(7, hidden, rng);
  CHECK(relative_diff(attention_forward(g2, x), attention_forward(expanded, x)) < 1e-13);
  // Weighted: group 0 of 2 groups = Σ w_j K_j / Σ w_j over heads 0..3.
  Vector<double> kw(h), vw = Vector<double>::Ones(h);
  kw << 1, 2, 3, 4, 0, 0, 5, 1;
  const AttentionWeights<double> gw = merge_to_gqa(w, 2, kw, vw);
  Matrix<double> expect = Matrix<double>::Zero(d, hidden);
  for (Index j = 0; j < 4; ++j) expect += kw(j) * w.k.middleRows(j * d, d);
  CHECK((gw.k.topRows(d) - expect / 10.0).cwiseAbs().maxCoeff() < 1e-14);
  CHECK((gw.k.bottomRows(d) - (5.0 * w.k.middleRows(6 * d, d) + w.k.middleRows(7 * d, d)) / 6.0).cwiseAbs().maxCoeff() <
        1e-14);
  CHECK((gw.v - g2_direct.v).cwiseAbs().maxCoeff() < 1e-15);
}

TEST_CASE("gated mixture: z = 1 is the MHA, z = 0 the GQA, activations equal weights' activations", "[merge]") {
  std::mt19937_64 rng(404);
  const Index h = 6, g = 2, d = 4, hidden = 10, n = 8;
  const AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
  const AttentionWeights<double> gqa = merge_to_gqa(w, g);
  const Matrix<double> x = gaussian<double>(n, hidden, rng);
  const Vector<double> ones = Vector<double>::Ones(h), zeros = Vector<double>::Zero(h);
  const AttentionWeights<double> at1 = gated_weights(w, gqa, ones, ones);
  CHECK(at1.k == w.k);
  CHECK(at1.v_bias == w.v_bias);
  CHECK(relative_diff(attention_forward(gated_weights(w, gqa, zeros, zeros), x), attention_forward(gqa, x)) < 1e-13);
  // Random gates: keys/values of the gated weights = gate_mix of per-head and per-group activations.
  Vector<double> zk(h), zv(h);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (Index j = 0; j < h; ++j) {
    zk(j) = unit(rng);
    zv(j) = unit(rng);
  }
  const AttentionWeights<double> mixed = gated_weights(w, gqa, zk, zv);
  const Matrix<double> k_mix = gate_mix(projections<double>(x, w.k, w.k_bias), projections<double>(x, gqa.k, gqa.k_bias), zk, d);
  const Matrix<double> v_mix = gate_mix(projections<double>(x, w.v, w.v_bias), projections<double>(x, gqa.v, gqa.v_bias), zv.array(), d);
  CHECK((projections<double>(x, mixed.k, mixed.k_bias) - k_mix).cwiseAbs().maxCoeff() < 1e-13);
  CHECK((projections<double>(x, mixed.v, mixed.v_bias) - v_mix).cwiseAbs().maxCoeff() < 1e-13);
  // An independent element: head 4 (group 1) at one token.
  const Index j = 4;
  const Vector<double> kh = w.k.middleRows(j * d, d) * x.row(0).transpose() + w.k_bias.segment(j * d, d);
  const Vector<double> kg = gqa.k.middleRows(d, d) * x.row(0).transpose() + gqa.k_bias.segment(d, d);
  CHECK((k_mix.block(0, j * d, 1, d).transpose() - (zk(j) * kh + (1 - zk(j)) * kg)).cwiseAbs().maxCoeff() < 1e-13);
  CHECK_THROWS_AS(gate_mix(projections<double>(x, w.k, w.k_bias), projections<double>(x, gqa.k, gqa.k_bias), Vector<double>(h - 1), d),
                  invalid_argument);
  CHECK_THROWS_AS(gated_weights(w, gqa, Vector<double>(h - 1), zv), invalid_argument);
}

TEST_CASE("transforms and merging reject bad input and leave the layer unchanged", "[transforms][merge][errors]") {
  std::mt19937_64 rng(505);
  const Index h = 4, d = 4, hidden = 8;
  const AttentionWeights<double> w = random_layer<double>(h, d, hidden, true, rng);
  std::vector<Matrix<double>> rot(static_cast<std::size_t>(h), Matrix<double>::Identity(d, d));
  auto unchanged = [&](const AttentionWeights<double>& a) { return a.q == w.q && a.k == w.k && a.o == w.o && a.k_bias == w.k_bias; };

  AttentionWeights<double> a = w;
  CHECK_THROWS_AS(apply_alignment(a, {0, 1, 1, 3}, rot, rot), invalid_argument);      // not a permutation
  CHECK_THROWS_AS(apply_alignment(a, {0, 1, 2}, rot, rot), invalid_argument);         // wrong length
  CHECK_THROWS_AS(apply_alignment(a, {0, 1, 2, 4}, rot, rot), invalid_argument);      // out of range
  auto scaled = rot;
  scaled[2] *= 1.1;
  CHECK_THROWS_AS(apply_alignment(a, {}, scaled, rot), invalid_argument);             // not orthogonal
  auto nan = rot;
  nan[1](0, 0) = std::nan("");
  CHECK_THROWS_AS(apply_alignment(a, {}, rot, nan), invalid_argument);
  CHECK_THROWS_AS(apply_alignment(a, {}, std::vector<Matrix<double>>(3, Matrix<double>::Identity(d, d)), rot),
                  invalid_argument);
  CHECK_THROWS_AS(apply_alignment(a, {}, std::vector<Matrix<double>>(4, Matrix<double>::Identity(d + 1, d + 1)), rot),
                  invalid_argument);
  CHECK(unchanged(a));

  AttentionWeights<double> gqa = merge_to_gqa(w, 2);
  CHECK_THROWS_AS(apply_alignment(gqa, {}, rot, rot), invalid_argument);              // needs MHA
  CHECK_THROWS_AS(merge_to_gqa(w, 3), invalid_argument);                              // 4 not divisible by 3
  CHECK_THROWS_AS(merge_to_gqa(w, 0), invalid_argument);
  Vector<double> neg = Vector<double>::Ones(h);
  neg(1) = -1;
  CHECK_THROWS_AS(merge_to_gqa(w, 2, neg), invalid_argument);
  Vector<double> zero_group = Vector<double>::Ones(h);
  zero_group(0) = zero_group(1) = 0;
  CHECK_THROWS_AS(merge_to_gqa(w, 2, zero_group), invalid_argument);
  CHECK_THROWS_AS(merge_to_gqa(w, 2, Vector<double>::Ones(h + 1)), invalid_argument);

  AttentionWeights<double> bad = w;
  bad.k.resize(h * d, hidden + 1);
  CHECK_THROWS_AS(bad.validate(), invalid_argument);
  CHECK_THROWS_AS(merge_to_gqa(bad, 2), invalid_argument);
  bad = w;
  bad.q_bias.resize(3);
  CHECK_THROWS_AS(apply_alignment(bad, {}, rot, rot), invalid_argument);
  bad = w;
  bad.o(0, 0) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(apply_alignment(bad, {}, rot, rot), invalid_argument);
  bad = w;
  bad.num_kv_heads = 3;
  CHECK_THROWS_AS(bad.validate(), invalid_argument);

  HeadGram<double> g(h, d);
  CHECK_THROWS_AS(predicted_merge_error(g, {{0, 1}}), invalid_argument);              // no tokens
  g.add(gaussian<double>(10, h * d, rng));
  CHECK_THROWS_AS(predicted_merge_error(g, {{0, 1}, {1, 2}}), invalid_argument);      // head in two groups
  CHECK_THROWS_AS(predicted_merge_error(g, {{0, 4}}), invalid_argument);
  CHECK_THROWS_AS(predicted_merge_error(g, {{}}), invalid_argument);
  CHECK_THROWS_AS(predicted_merge_error(g, {{0, 1}}, std::vector<Matrix<double>>(2)), invalid_argument);
}
