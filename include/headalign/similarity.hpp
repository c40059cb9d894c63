/// @file similarity.hpp
/// @brief Pairwise similarity of attention heads after optimal alignment, from Gram blocks only.
///
/// For heads i, j with cross-Gram \f$ G_{ij} = X_i^\top X_j \f$ and the best transform R of the
/// chosen set, \f$ \mathrm{tr}(R^\top G_{ij}) \f$ = procrustes_score(G_ij): singular values only.
#ifndef HEADALIGN_SIMILARITY_HPP
#define HEADALIGN_SIMILARITY_HPP

#include "detail/simd_bidiagonal.hpp"
#include "gram.hpp"
#include "procrustes.hpp"

#include <cmath>
#include <utility>
#include <vector>

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
///
/// Orthogonal and Rotation scores need singular values only. Where the one-pair path would call
/// LAPACK ?gesdd (HEADALIGN_USE_LAPACKE, PolarMethod Auto or Gesdd) and the CPU has AVX2 and FMA,
/// 4 pairs (double) or 8 (float) are bidiagonalised together in SIMD lanes and finished by
/// ?bdsqr (detail/simd_bidiagonal.hpp): the same values to round-off in about half the time
/// (`BM_SimilarityMatrix` against `BM_SimilarityMatrixOnePair`, benchmarks/README.md).
/// @throws invalid_argument when the Gram holds no tokens, or for an invalid RopeSpec
template <class S>
Matrix<S> similarity_matrix(const HeadGram<S>& g, Alignment alignment, Metric metric, RopeSpec rope = {},
                            ProcrustesOptions options = {}) {
  HEADALIGN_CHECK(g.tokens() > 0,
                  "similarity_matrix: the HeadGram holds no tokens (no calibration data was added)");
  const Index h = g.num_heads();
  if (alignment == Alignment::Rope) rotary_dims(rope, g.head_dim());  // validate once, up front
  const S n = static_cast<S>(g.tokens());
  Vector<S> tr(h);
  for (Index i = 0; i < h; ++i) tr(i) = g.trace(i);
  Matrix<S> sim = Matrix<S>::Zero(h, h);
  auto store = [&](Index i, Index j, S s) {
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
  };
  std::vector<std::pair<Index, Index>> pairs;
  for (Index i = 0; i < h; ++i)
    for (Index j = i + 1; j < h; ++j) pairs.emplace_back(i, j);
  std::size_t done = 0;
  const Index d = g.head_dim();
#if HEADALIGN_SIMD_BIDIAGONAL
  // Several pairs at once (detail/simd_bidiagonal.hpp) where the one-pair path would call ?gesdd:
  // the same singular values, read straight from the Gram's lower triangle (G_ji = G_ijᵀ has the
  // same singular values and determinant).
  constexpr int width = detail::simd_bidiagonal_width<S>();
  if constexpr (width > 1) {
    if ((alignment == Alignment::Orthogonal || alignment == Alignment::Rotation) &&
        detail::resolve_method(options.method, detail::lapack_scalar<S>()) == PolarMethod::Gesdd) {
      const Index ld = g.lower().rows();
      std::vector<Vector<S>> sigma;
      std::vector<int> sign;
      const S* blocks[width];
      while (done < pairs.size()) {
        const int count = static_cast<int>(std::min<std::size_t>(width, pairs.size() - done));
        for (int l = 0; l < count; ++l) {
          const auto& p = pairs[done + static_cast<std::size_t>(l)];
          blocks[l] = g.lower().data() + p.second * d + p.first * d * ld;  // G_ji
        }
        if (!detail::simd_singular_values<S>(blocks, count, d, ld, sigma, sign)) break;
        for (int l = 0; l < count; ++l) {
          const auto& sv = sigma[static_cast<std::size_t>(l)];
          S s = sv.sum();
          if (alignment == Alignment::Rotation && sign[static_cast<std::size_t>(l)] < 0)
            s -= S(2) * sv(d - 1);
          store(pairs[done + static_cast<std::size_t>(l)].first,
                pairs[done + static_cast<std::size_t>(l)].second, s);
        }
        done += static_cast<std::size_t>(count);
      }
    }
  }
#endif
  for (; done < pairs.size(); ++done) {
    const auto [i, j] = pairs[done];
    // Every score is the same for G_ij and G_ji = G_ijᵀ (R ↦ Rᵀ), so read G_ji in place.
    store(i, j, procrustes_score(g.lower().block(j * d, i * d, d, d), alignment, rope, options));
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
  HEADALIGN_CHECK(keys.num_heads() == values.num_heads(),
                  "key Gram has " << keys.num_heads() << " heads but value Gram has " << values.num_heads());
  return similarity_matrix(keys, key_alignment, metric, rope, options) +
         similarity_matrix(values, value_alignment, metric, rope, options);
}

}  // namespace headalign

#endif  // HEADALIGN_SIMILARITY_HPP
