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
#include "similarity.hpp"
#include "transforms.hpp"

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
  Grouping grouping;          ///< groups of original head indices; group c becomes KV head c
  Matrix<S> similarity;       ///< the H × H similarity that grouped the heads (empty for GroupBy::None)
  std::vector<Index> order;   ///< new head p is old head order[p] (the groups, concatenated)
  std::vector<Matrix<S>> key_rotations;    ///< per new head
  std::vector<Matrix<S>> value_rotations;  ///< per new head
  std::vector<GpaResult<S>> key_gpa;       ///< per group: iterations, converged, objective
  std::vector<GpaResult<S>> value_gpa;     ///< per group
  MergeError<S> key_error;    ///< predicted merge error of the keys, per original head (from the key Gram)
  MergeError<S> value_error;  ///< predicted merge error of the values
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
                  "plan_layer: key Gram is " << h << " heads × " << d << " but value Gram is " << values.num_heads()
                                             << " × " << values.head_dim());
  HEADALIGN_CHECK(keys.tokens() > 0 && values.tokens() > 0, "plan_layer: the key or value Gram holds no tokens");
  HEADALIGN_CHECK(options.num_groups > 0 && h % options.num_groups == 0,
                  "plan_layer: num_heads (" << h << ") is not divisible by num_groups (" << options.num_groups << ")");
  LayerPlan<S> plan;
  switch (options.group_by) {
    case GroupBy::None: break;
    case GroupBy::Key:
      plan.similarity = similarity_matrix(keys, options.key_alignment, options.metric, options.rope);
      break;
    case GroupBy::Value:
      plan.similarity = similarity_matrix(values, options.value_alignment, options.metric, options.rope);
      break;
    case GroupBy::Joint:
      plan.similarity = joint_similarity(keys, options.key_alignment, values, options.value_alignment, options.metric,
                                         options.rope);
      break;
  }
  plan.grouping = options.group_by == GroupBy::None ? group_contiguous(h, options.num_groups)
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

/// @brief Folds a plan into an MHA layer and merges it: apply_alignment() then merge_to_gqa().
/// The result has `plan.grouping.groups.size()` KV heads; query head p is old head plan.order[p].
template <class S>
AttentionWeights<S> convert_layer(const AttentionWeights<S>& w, const LayerPlan<S>& plan) {
  AttentionWeights<S> aligned = w;
  apply_alignment(aligned, plan.order, plan.key_rotations, plan.value_rotations);
  return merge_to_gqa(aligned, static_cast<Index>(plan.grouping.groups.size()));
}

}  // namespace headalign

#endif  // HEADALIGN_PIPELINE_HPP
