/// @file pipeline.hpp
/// @brief One layer from calibration statistics to GQA weights: similarity → grouping → GPA →
/// apply_alignment → merge_to_gqa, with the predicted merge error of the plan.
///
/// plan_layer() works on the key and value Grams only (no weights, no tokens), so a plan — and its
/// predicted error — can be made for several KV-head counts before choosing one per layer;
/// convert_layer() folds a plan into a layer's weights.
#ifndef HEADALIGN_PIPELINE_HPP
#define HEADALIGN_PIPELINE_HPP

#include "gpa.hpp"
#include "gram.hpp"
#include "grouping.hpp"
#include "merge.hpp"
#include "merge_aware.hpp"
#include "merge_error.hpp"
#include "similarity.hpp"
#include "transforms.hpp"

#include <optional>
#include <utility>
#include <vector>

namespace headalign {

/// @brief Which similarity groups the heads (the reference's `item`).
enum class GroupBy {
  Value,  ///< value similarity (the paper's best Sheared-LLaMA setting)
  Key,    ///< key similarity
  Joint,  ///< key + value similarity (joint_similarity())
  None    ///< adjacent heads, as plain GQA
};

/// @brief Settings of plan_layer(). Defaults: the paper's best setting (group by value, `cos`,
/// RoPE-constrained keys, orthogonal values); `GroupBy::None` with `Alignment::None` for keys
/// and values is the plain mean-pool GQA baseline.
struct PlanOptions {
  Index num_groups = 0;  ///< KV heads after merging (must divide the number of heads)
  GroupBy group_by = GroupBy::Value;
  Metric metric = Metric::Cosine;
  Alignment key_alignment = Alignment::Rope;
  Alignment value_alignment = Alignment::Orthogonal;
  RopeSpec rope = {};
  GroupingOptions grouping = {};
  GpaOptions gpa = {};
};

/// @brief What plan_layer() decided, in the form apply_alignment() and merge_to_gqa() take.
template <class S>
struct LayerPlan {
  Grouping grouping;         ///< groups of original head indices; group c becomes KV head c
  Matrix<S> similarity;      ///< the H × H similarity that grouped the heads (empty for GroupBy::None)
  std::vector<Index> order;  ///< new head p is old head order[p] (the groups, concatenated)
  std::vector<Matrix<S>> key_rotations;    ///< per new head
  std::vector<Matrix<S>> value_rotations;  ///< per new head
  std::vector<GpaResult<S>> key_gpa;       ///< per group: iterations, converged, objective
  std::vector<GpaResult<S>> value_gpa;     ///< per group
  MergeError<S> key_error;    ///< predicted merge error of the keys, per original head (from the key Gram)
  MergeError<S> value_error;  ///< predicted merge error of the values
  Alignment key_alignment =
      Alignment::None;  ///< the options' key alignment (for convert_layer's RoPE default)
  RopeSpec rope = {};   ///< the options' RoPE spec
  /// Whether every GPA converged.
  bool converged() const {
    for (const auto& r : key_gpa)
      if (!r.converged) return false;
    for (const auto& r : value_gpa)
      if (!r.converged) return false;
    return true;
  }
};

/// @brief Plans the conversion of one layer from its key and value Grams.
///
/// Similarity (by `group_by`) → group_heads() (or group_contiguous() for `None`) → align_group()
/// for keys and values in every group → predicted_merge_error() of the result. The Grams decide
/// the criterion: row-normalised Grams with `Metric::Cosine` are the reference's `cos`,
/// unnormalised Grams with `Metric::Distance` its `dist`. The predicted errors are in the units
/// of the Grams (for unnormalised projection outputs: exactly the mean squared error the merged
/// layer makes on the calibration tokens).
/// @throws invalid_argument when the Grams differ in shape or hold no tokens, or num_groups does
///         not divide the number of heads
template <class S>
LayerPlan<S> plan_layer(const HeadGram<S>& keys, const HeadGram<S>& values, const PlanOptions& options) {
  const Index h = keys.num_heads(), d = keys.head_dim();
  HEADALIGN_CHECK(values.num_heads() == h && values.head_dim() == d,
                  "plan_layer: key Gram is " << h << " heads × " << d << " but value Gram is "
                                             << values.num_heads() << " × " << values.head_dim());
  HEADALIGN_CHECK(keys.tokens() > 0 && values.tokens() > 0,
                  "plan_layer: the key or value Gram holds no tokens");
  HEADALIGN_CHECK(
      options.num_groups > 0 && h % options.num_groups == 0,
      "plan_layer: num_heads (" << h << ") is not divisible by num_groups (" << options.num_groups << ")");
  LayerPlan<S> plan;
  plan.key_alignment = options.key_alignment;
  plan.rope = options.rope;
  switch (options.group_by) {
    case GroupBy::None:
      break;
    case GroupBy::Key:
      plan.similarity = similarity_matrix(keys, options.key_alignment, options.metric, options.rope);
      break;
    case GroupBy::Value:
      plan.similarity = similarity_matrix(values, options.value_alignment, options.metric, options.rope);
      break;
    case GroupBy::Joint:
      plan.similarity = joint_similarity(keys, options.key_alignment, values, options.value_alignment,
                                         options.metric, options.rope);
      break;
  }
  plan.grouping = options.group_by == GroupBy::None
                      ? group_contiguous(h, options.num_groups)
                      : group_heads(plan.similarity, options.num_groups, options.grouping);
  std::vector<Matrix<S>> key_by_head(static_cast<std::size_t>(h)), value_by_head(static_cast<std::size_t>(h));
  for (const auto& grp : plan.grouping.groups) {
    plan.key_gpa.push_back(align_group(keys, grp, options.key_alignment, options.rope, options.gpa));
    plan.value_gpa.push_back(align_group(values, grp, options.value_alignment, options.rope, options.gpa));
    for (std::size_t t = 0; t < grp.size(); ++t) {
      plan.order.push_back(grp[t]);
      plan.key_rotations.push_back(plan.key_gpa.back().rotations[t]);
      plan.value_rotations.push_back(plan.value_gpa.back().rotations[t]);
      key_by_head[static_cast<std::size_t>(grp[t])] = plan.key_rotations.back();
      value_by_head[static_cast<std::size_t>(grp[t])] = plan.value_rotations.back();
    }
  }
  plan.key_error = predicted_merge_error(keys, plan.grouping.groups, key_by_head);
  plan.value_error = predicted_merge_error(values, plan.grouping.groups, value_by_head);
  return plan;
}

/// @brief What a merge is predicted to cost where it matters, from the Grams: the output error
/// \f$ \sum_h E\|O_h(v_h - v_g)\|^2 \f$ and, with query moments, the logit error
/// \f$ \sum_h E[(q_h^\top(k_h - k_g))^2] \f$, for the chosen weighting and for the plain mean
/// (both after alignment). Units are those of the Grams (row-normalised Grams: unit-length heads).
template <class S>
struct MergeAssessment {
  MergeError<S> value_output;       ///< output error of the chosen value merge
  MergeError<S> value_output_mean;  ///< the same for the mean
  MergeError<S> key_logit;          ///< logit error of the chosen key merge (empty without query moments)
  MergeError<S> key_logit_mean;     ///< the same for the mean (empty without query moments)
};

/// @brief A layer converted and assessed in one pass (convert_and_assess()).
template <class S>
struct ConvertedLayer {
  AttentionWeights<S> aligned;    ///< the aligned MHA layer (same function as the input; `--aligned-only`)
  AttentionWeights<S> merged;     ///< the GQA layer, as convert_layer() returns it
  MergeAssessment<S> assessment;  ///< as assess_merge() returns it
};

namespace detail {

template <class S>
struct PreparedMerge {
  AttentionWeights<S> aligned;
  std::vector<Matrix<S>> key_metrics;    // per new head; empty without query statistics
  std::vector<Matrix<S>> value_metrics;  // output_metrics(aligned) when computed; empty otherwise
  MergeMixing<S> mixing;
};

// Aligns the layer once and derives what the merge needs from it: the query metrics (when there
// are query moments), the output metrics (when the weighting or an assessment needs them) and the
// mixing matrices. The layer is taken by value: a caller that passes an rvalue lends its storage.
template <class S>
PreparedMerge<S> prepare_merge(AttentionWeights<S> layer, const LayerPlan<S>& plan, const MergeOptions& merge,
                               const HeadMoments<S>* queries, bool assess) {
  PreparedMerge<S> p{std::move(layer), {}, {}, {}};
  const AttentionWeights<S>& w = p.aligned;  // shapes only: the same before and after alignment
  apply_alignment(p.aligned, plan.order, plan.key_rotations, plan.value_rotations);
  if (queries) {
    HEADALIGN_CHECK(queries->num_heads() == w.num_heads && queries->head_dim() == w.head_dim,
                    "convert_layer: query moments are " << queries->num_heads() << " heads × "
                                                        << queries->head_dim() << " but the layer has "
                                                        << w.num_heads << " × " << w.head_dim);
    const std::optional<RopeSpec> rope = merge.rope ? merge.rope
                                         : plan.key_alignment == Alignment::Rope
                                             ? std::optional<RopeSpec>(plan.rope)
                                             : std::nullopt;
    p.key_metrics = query_metrics(*queries, w.num_heads, rope, plan.order, plan.key_rotations);
  }
  if (assess || merge.weighting == MergeWeighting::OutputAware || merge.weighting == MergeWeighting::Full)
    p.value_metrics = output_metrics(p.aligned);
  p.mixing = merge_mixing(p.aligned, static_cast<Index>(plan.grouping.groups.size()), merge, p.key_metrics,
                          p.value_metrics);
  return p;
}

// The predicted errors of a prepared merge (see assess_merge()).
template <class S>
MergeAssessment<S> assess_prepared(const HeadGram<S>& keys, const HeadGram<S>& values,
                                   const LayerPlan<S>& plan, const PreparedMerge<S>& p) {
  const std::size_t h = plan.order.size();
  // Everything by original head index, as the Grams and the groups are.
  auto by_head = [&](const std::vector<Matrix<S>>& per_new) {
    std::vector<Matrix<S>> out;
    if (per_new.empty()) return out;
    out.resize(h);
    for (std::size_t q = 0; q < h; ++q) out[static_cast<std::size_t>(plan.order[q])] = per_new[q];
    return out;
  };
  const auto key_rot = by_head(plan.key_rotations), value_rot = by_head(plan.value_rotations);
  const auto out_metrics = by_head(p.value_metrics);
  MergeAssessment<S> a;
  a.value_output =
      predicted_merge_error(values, plan.grouping.groups, value_rot, by_head(p.mixing.value), out_metrics);
  a.value_output_mean = predicted_merge_error(values, plan.grouping.groups, value_rot, {}, out_metrics);
  if (!p.key_metrics.empty()) {
    const auto q_metrics = by_head(p.key_metrics);
    a.key_logit =
        predicted_merge_error(keys, plan.grouping.groups, key_rot, by_head(p.mixing.key), q_metrics);
    a.key_logit_mean = predicted_merge_error(keys, plan.grouping.groups, key_rot, {}, q_metrics);
  }
  return a;
}

}  // namespace detail

/// @brief Folds a plan into an MHA layer and merges it: apply_alignment() then merge_to_gqa().
///
/// The result has `plan.grouping.groups.size()` KV heads; query head p is old head plan.order[p].
/// @p merge chooses the weighting (MergeWeighting): the plain mean by default; output-aware value
/// merging needs the weights only; query-aware key merging needs the query moments of the layer
/// (@p queries, pre-RoPE, original head order), which are rotated with the keys and, for RoPE
/// models, averaged over relative positions.
/// @throws invalid_argument when the weighting needs query moments and none are given, or they
///         do not match the layer
/// @note @p w is taken by value: `convert_layer(std::move(w), plan)` aligns in w's storage
///       instead of a copy (the language bindings do so).
template <class S>
AttentionWeights<S> convert_layer(AttentionWeights<S> w, const LayerPlan<S>& plan,
                                  const MergeOptions& merge = {}, const HeadMoments<S>* queries = nullptr) {
  const detail::PreparedMerge<S> p = detail::prepare_merge(std::move(w), plan, merge, queries, false);
  return merge_to_gqa(p.aligned, static_cast<Index>(plan.grouping.groups.size()), p.mixing);
}

/// @brief Predicts, from the key and value Grams, the output and logit errors of
/// convert_layer(@p w, @p plan, @p merge, @p queries) and of the plain mean (predicted_merge_error()
/// with mixing and metric matrices).
template <class S>
MergeAssessment<S> assess_merge(const HeadGram<S>& keys, const HeadGram<S>& values,
                                const AttentionWeights<S>& w, const LayerPlan<S>& plan,
                                const MergeOptions& merge = {}, const HeadMoments<S>* queries = nullptr) {
  return detail::assess_prepared(keys, values, plan, detail::prepare_merge(w, plan, merge, queries, true));
}

/// @brief convert_layer() and assess_merge() together, aligning the layer and computing its
/// metrics and mixing once: the aligned layer, the merged layer and the assessment.
/// @p w is taken by value, as in convert_layer().
template <class S>
ConvertedLayer<S> convert_and_assess(const HeadGram<S>& keys, const HeadGram<S>& values,
                                     AttentionWeights<S> w, const LayerPlan<S>& plan,
                                     const MergeOptions& merge = {},
                                     const HeadMoments<S>* queries = nullptr) {
  detail::PreparedMerge<S> p = detail::prepare_merge(std::move(w), plan, merge, queries, true);
  ConvertedLayer<S> out;
  out.merged = merge_to_gqa(p.aligned, static_cast<Index>(plan.grouping.groups.size()), p.mixing);
  out.assessment = detail::assess_prepared(keys, values, plan, p);
  out.aligned = std::move(p.aligned);
  return out;
}

}  // namespace headalign

#endif  // HEADALIGN_PIPELINE_HPP
