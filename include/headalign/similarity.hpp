/// @file similarity.hpp
/// @brief Pairwise similarity of attention heads after optimal alignment, from Gram blocks only.
///
/// For heads i, j with cross-Gram \f$ G_{ij} = X_i^\top X_j \f$ and the best transform R of the
/// chosen set, \f$ \mathrm{tr}(R^\top G_{ij}) \f$ = procrustes_score(G_ij): singular values only.
#ifndef HEADALIGN_SIMILARITY_HPP
#define HEADALIGN_SIMILARITY_HPP

#include "gram.hpp"
#include "procrustes.hpp"

#include <cmath>

namespace headalign {

/// @brief What a pair similarity measures.
enum class Metric {
  Cosine,   ///< mean cosine after alignment (the reference's `cos` criterion)
  Distance  ///< minus the mean squared distance after alignment (the reference's `dist` criterion)
};

/// @brief H × H similarities of all head pairs after aligning head i onto head j.
///
/// With \f$ s_{ij} = \max_R \mathrm{tr}(R^\top G_{ij}) \f$ and n = tokens():
/// - `Cosine` with `normalize_rows`: \f$ s_{ij}/n \f$, the mean over tokens of
///   \f$ \cos(x_{i,t} R, x_{j,t}) \f$. Without row normalisation (e.g. a data-free Gram) the
///   per-token cosines are not available and the normalised score
///   \f$ s_{ij} / \sqrt{\mathrm{tr}\,G_{ii}\,\mathrm{tr}\,G_{jj}} \f$ (the cosine of the stacked,
///   aligned activations) is returned instead (0 when a head is all zero).
/// - `Distance`: \f$ -(\mathrm{tr}\,G_{ii} + \mathrm{tr}\,G_{jj} - 2 s_{ij})/n \f$, minus the mean of
///   \f$ \|x_{i,t} R - x_{j,t}\|^2 \f$.
///
/// The result is symmetric (\f$ s_{ji} = s_{ij} \f$: R ↦ Rᵀ maps one problem onto the other for
/// every alignment set), with a zero diagonal (unused).
/// @throws invalid_argument when the Gram holds no tokens, or for an invalid RopeSpec
template <class S>
Matrix<S> similarity_matrix(const HeadGram<S>& g, Alignment alignment, Metric metric, RopeSpec rope = {},
                            ProcrustesOptions options = {}) {
  HEADALIGN_CHECK(g.tokens() > 0, "similarity_matrix: the HeadGram holds no tokens (no calibration data was added)");
  const Index h = g.num_heads();
  if (alignment == Alignment::Rope) rotary_dims(rope, g.head_dim());  // validate once, up front
  const S n = static_cast<S>(g.tokens());
  Vector<S> tr(h);
  for (Index i = 0; i < h; ++i) tr(i) = g.trace(i);
  Matrix<S> sim = Matrix<S>::Zero(h, h);
  for (Index i = 0; i < h; ++i) {
    for (Index j = i + 1; j < h; ++j) {
      const S s = procrustes_score(g.block(i, j), alignment, rope, options);
      S value;
      if (metric == Metric::Distance) {
        value = -(tr(i) + tr(j) - S(2) * s) / n;
      } else if (g.normalize_rows()) {
        value = s / n;
      } else {
        const S den = std::sqrt(tr(i)) * std::sqrt(tr(j));  // (the product can underflow)
        value = den > S(0) ? s / den : S(0);
      }
      sim(i, j) = sim(j, i) = value;
    }
  }
  return sim;
}

/// @brief Joint key + value similarity: the sum of the two similarity matrices.
///
/// The reference groups heads by keys or by values only; grouping by the sum keeps both the
/// attention pattern and the output of the merged heads in view.
/// @throws invalid_argument when the two Grams have different numbers of heads
template <class S>
Matrix<S> joint_similarity(const HeadGram<S>& keys, Alignment key_alignment, const HeadGram<S>& values,
                           Alignment value_alignment, Metric metric, RopeSpec rope = {},
                           ProcrustesOptions options = {}) {
  HEADALIGN_CHECK(keys.num_heads() == values.num_heads(), "key Gram has " << keys.num_heads()
                                                                          << " heads but value Gram has " << values.num_heads());
  return similarity_matrix(keys, key_alignment, metric, rope, options) +
         similarity_matrix(values, value_alignment, metric, rope, options);
}

}  // namespace headalign

#endif  // HEADALIGN_SIMILARITY_HPP
