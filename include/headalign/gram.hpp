/// @file gram.hpp
/// @brief HeadGram: the streaming calibration statistics every later stage works from.
///
/// For token rows \f$ x_t \in \mathbb{R}^{H d} \f$ (head h in columns [h·d, (h+1)·d)) the
/// accumulator holds \f$ G = \sum_t x_t x_t^\top \f$, whose d × d blocks are the cross-Gram
/// matrices \f$ G_{ij} = X_i^\top X_j \f$. Alignment scores, similarities and generalized
/// Procrustes all depend on the activations only through these blocks (README: "Gram space"), so the
/// calibration data is read once and never stored: memory is O((H·d)²) whatever the number of
/// tokens. Accumulators over disjoint token sets merge by addition.
#ifndef HEADALIGN_GRAM_HPP
#define HEADALIGN_GRAM_HPP

#include "config.hpp"
#include "detail/blas.hpp"
#include "detail/numeric.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace headalign {

/// @brief Streaming accumulator of the cross-Gram blocks \f$ G_{ij} = X_i^\top X_j \f$ of H heads.
///
/// @tparam S accumulator scalar, float or double (double is advised past ~10⁵ tokens)
///
/// With `normalize_rows`, every head's vector of every token is scaled to unit length before it
/// is accumulated (a zero vector stays zero), so that \f$ \mathrm{tr}(R^\top G_{ij})/n \f$ is the
/// mean cosine after alignment — the reference's `cos` criterion (Sec. 3.3 of arXiv 2412.20677).
///
/// Example:
/// @code
/// headalign::HeadGram<double> g(32, 128, /*normalize_rows=*/true);
/// for (const auto& batch : key_batches) g.add(batch);   // batch: n × 4096, any float type
/// Eigen::MatrixXd g01 = g.block(0, 1);                    // X_0ᵀ X_1
/// @endcode
template <class S>
class HeadMoments;

template <class S>
class HeadGram {
  friend class HeadMoments<S>;

  static_assert(std::is_same<S, float>::value || std::is_same<S, double>::value,
                "headalign: HeadGram accumulates in float or double");

 public:
  using Scalar = S;
  using Vec = Vector<S>;  ///< per-head vectors (energies, weights)

  /// @param num_heads H ≥ 1
  /// @param head_dim d ≥ 1
  /// @param normalize_rows scale each head's vector of each token to unit length (the `cos` criterion)
  /// @param chunk_rows tokens converted and accumulated at a time (the only buffer held)
  /// @throws invalid_argument when a size is not positive
  HeadGram(Index num_heads, Index head_dim, bool normalize_rows = false, Index chunk_rows = 512)
      : h_(num_heads), d_(head_dim), normalize_(normalize_rows), chunk_(chunk_rows) {
    HEADALIGN_CHECK(num_heads > 0, "num_heads (" << num_heads << ") must be positive");
    HEADALIGN_CHECK(head_dim > 0, "head_dim (" << head_dim << ") must be positive");
    HEADALIGN_CHECK(chunk_rows > 0, "chunk_rows (" << chunk_rows << ") must be positive");
    g_ = Matrix<S>::Zero(dim(), dim());
  }

  /// @brief Accumulates token rows: @p tokens is n × (H·d), head h in columns [h·d, (h+1)·d).
  ///
  /// Any scalar type and storage order; row- or column-major data of type S without row
  /// normalisation feed SYRK directly, other input is converted chunk by chunk.
  /// @throws invalid_argument when the width is not H·d or the data hold NaN/Inf (nothing is added then)
  template <class Derived>
  void add(const Eigen::MatrixBase<Derived>& tokens) {
    using T = typename Derived::Scalar;
    HEADALIGN_CHECK(tokens.cols() == dim(),
                    "token rows have " << tokens.cols() << " columns, expected num_heads · head_dim = " << h_
                                       << " · " << d_ << " = " << dim());
    detail::check_finite(tokens, "token activations");
    if (tokens.size() > 0) reserve(tokens.rows(), static_cast<double>(tokens.cwiseAbs().maxCoeff()));
    const Index n = tokens.rows();
    constexpr bool direct = std::is_same<T, S>::value && (int(Derived::Flags) & Eigen::DirectAccessBit) != 0;
    if constexpr (direct) {
      if (!normalize_ && tokens.derived().innerStride() == 1 && n > 0) {
        // Data of type S feed SYRK in place, without a copy: row-major n × D is column-major
        // D × n (G += A Aᵀ); column-major n × D gives G += Aᵀ A.
        const Index stride = tokens.derived().outerStride();
        if (Derived::IsRowMajor) {
          detail::syrk_lower(g_, tokens.derived().data(), n, n == 1 ? dim() : stride, false);
        } else {
          detail::syrk_lower(g_, tokens.derived().data(), n, dim() == 1 ? n : stride, true);
        }
        tokens_ += n;
        return;
      }
    }
    accumulate(n, [&](Index t0, Index k, Matrix<S>& buf) {
      buf.leftCols(k) = tokens.middleRows(t0, k).transpose().template cast<S>();
    });
  }

  /// @brief Accumulates @p rows token rows from a row-major buffer with @p row_stride elements per row.
  template <class T>
  void add(const T* data, Index rows, Index row_stride) {
    HEADALIGN_CHECK(
        rows >= 0 && row_stride >= dim(),
        "row_stride (" << row_stride << ") is smaller than num_heads · head_dim (" << dim() << ")");
    using Map = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0,
                           Eigen::OuterStride<>>;
    add(Map(data, rows, dim(), Eigen::OuterStride<>(row_stride)));
  }

  /// @brief Adds the statistics of another accumulator (disjoint tokens): G ← G + G', n ← n + n'.
  /// @throws invalid_argument when the shapes or the normalisation differ
  void merge(const HeadGram& other) {
    HEADALIGN_CHECK(other.h_ == h_ && other.d_ == d_, "cannot merge a HeadGram of "
                                                          << other.h_ << " × " << other.d_ << " into one of "
                                                          << h_ << " × " << d_);
    HEADALIGN_CHECK(other.normalize_ == normalize_, "cannot merge HeadGrams with different normalize_rows");
    HEADALIGN_CHECK(bound_ + other.bound_ <= limit(), "merging these HeadGrams could overflow the "
                                                          << detail::scalar_name<S>()
                                                          << " accumulator; accumulate in double");
    g_.template triangularView<Eigen::Lower>() += other.g_;
    tokens_ += other.tokens_;
    bound_ += other.bound_;
  }

  Index num_heads() const { return h_; }
  Index head_dim() const { return d_; }
  Index dim() const { return h_ * d_; }
  /// Number of token rows accumulated (for a data-free Gram: 1, one expectation).
  Index tokens() const { return tokens_; }
  bool normalize_rows() const { return normalize_; }

  /// @brief The cross-Gram block \f$ G_{ij} = X_i^\top X_j \f$ (d × d).
  /// @throws invalid_argument for a head index out of range
  Matrix<S> block(Index i, Index j) const {
    HEADALIGN_CHECK(i >= 0 && i < h_ && j >= 0 && j < h_,
                    "head index (" << i << ", " << j << ") out of range for " << h_ << " heads");
    if (i > j) return g_.block(i * d_, j * d_, d_, d_);
    if (i < j) return g_.block(j * d_, i * d_, d_, d_).transpose();
    return g_.block(i * d_, i * d_, d_, d_).template selfadjointView<Eigen::Lower>();
  }

  /// \f$ \mathrm{tr}\, G_{ii} = \sum_t \|x_{i,t}\|^2 \f$.
  S trace(Index i) const { return g_.block(i * d_, i * d_, d_, d_).trace(); }

  /// The full symmetric (H·d) × (H·d) matrix G.
  Matrix<S> gram() const { return g_.template selfadjointView<Eigen::Lower>(); }

  /// The storage: only its lower triangle is meaningful.
  const Matrix<S>& lower() const { return g_; }

  /// @brief Statistics of activations stored head-major, `[H, n, d]` row-major (the reference's layout).
  /// @throws invalid_argument for NaN/Inf or non-positive sizes
  template <class T>
  static HeadGram from_activations(const T* data, Index num_heads, Index tokens, Index head_dim,
                                   bool normalize_rows = false) {
    HeadGram g(num_heads, head_dim, normalize_rows);
    HEADALIGN_CHECK(tokens >= 0, "tokens (" << tokens << ") must be non-negative");
    const Index total = num_heads * tokens * head_dim;
    double largest = 0;
    for (Index i = 0; i < total; ++i) {
      HEADALIGN_CHECK(std::isfinite(static_cast<double>(data[i])),
                      "activations contain NaN or Inf (element " << i << ")");
      largest = std::max(largest, std::abs(static_cast<double>(data[i])));
    }
    if (total > 0) g.reserve(tokens, largest);
    g.accumulate(tokens, [&](Index t0, Index k, Matrix<S>& buf) {
      for (Index h = 0; h < num_heads; ++h)
        for (Index t = 0; t < k; ++t)
          for (Index c = 0; c < head_dim; ++c)
            buf(h * head_dim + c, t) = static_cast<S>(data[(h * tokens + t0 + t) * head_dim + c]);
    });
    return g;
  }

  /// @brief Data-free statistics from the projection weights alone: \f$ G_{ij} = W_i W_j^\top \f$.
  ///
  /// @p weights is the key or value projection, [H·d, hidden] (Hugging Face `nn.Linear` layout),
  /// head h owning rows [h·d, (h+1)·d). For inputs with \f$ E[x x^\top] = I \f$ (whitened
  /// hidden states) the per-token expectation \f$ E[X_i^\top X_j]/n \f$ equals \f$ W_i W_j^\top \f$:
  /// this is the Gram of one "average token" (tokens() = 1). Use it when no calibration data
  /// exists; it ignores how the real hidden states are distributed. Row normalisation does not
  /// apply (there are no rows), so Cosine similarities of such a Gram are normalised scores.
  template <class Derived>
  static HeadGram from_weights(const Eigen::MatrixBase<Derived>& weights, Index num_heads, Index head_dim) {
    HeadGram g(num_heads, head_dim, false);
    HEADALIGN_CHECK(weights.rows() == g.dim(), "projection weights have "
                                                   << weights.rows()
                                                   << " rows, expected num_heads · head_dim = " << g.dim());
    HEADALIGN_CHECK(weights.cols() > 0, "projection weights have no columns");
    detail::check_finite(weights, "projection weights");
    const Matrix<S> w = weights.template cast<S>();
    g.g_.template selfadjointView<Eigen::Lower>().rankUpdate(w);
    HEADALIGN_CHECK(detail::all_finite(g.g_), "projection weights too large for a "
                                                  << detail::scalar_name<S>()
                                                  << " Gram (W Wᵀ overflows); use double");
    g.tokens_ = 1;
    g.bound_ = static_cast<double>(g.g_.diagonal().maxCoeff());
    return g;
  }

  /// @brief Statistics accumulated elsewhere: the lower triangle of an (H·d) × (H·d) Gram
  /// \f$ G = \sum_t x_t x_t^\top \f$ over @p tokens rows (for example a cuda::DeviceGram copied to
  /// the host). Only the lower triangle of @p gram is read.
  /// @throws invalid_argument for a wrong shape, negative tokens, NaN/Inf in the lower triangle, a
  /// negative diagonal entry, or an off-diagonal entry larger than the Cauchy–Schwarz bound allows
  /// by more than 0.1 % plus round-off (|G_ab| ≤ √(G_aa G_bb)).
  template <class Derived>
  static HeadGram from_gram(const Eigen::MatrixBase<Derived>& gram, Index num_heads, Index head_dim,
                            Index tokens, bool normalize_rows = false) {
    HeadGram g(num_heads, head_dim, normalize_rows);
    g.check_gram_shape(gram.rows(), gram.cols());
    HEADALIGN_CHECK(tokens >= 0, "tokens (" << tokens << ") must not be negative");
    g.g_.template triangularView<Eigen::Lower>() =
        gram.template cast<S>().template triangularView<Eigen::Lower>();
    g.adopt(tokens);
    return g;
  }

  /// @brief As from_gram() above, taking over @p gram's storage instead of copying it: for
  /// statistics read from a file, which need not be held twice. The upper triangle is not read.
  static HeadGram from_gram(Matrix<S>&& gram, Index num_heads, Index head_dim, Index tokens,
                            bool normalize_rows = false) {
    HEADALIGN_CHECK(tokens >= 0, "tokens (" << tokens << ") must not be negative");
    HeadGram g(Storage{}, num_heads, head_dim, normalize_rows);
    g.check_gram_shape(gram.rows(), gram.cols());
    g.g_ = std::move(gram);
    g.adopt(tokens);
    return g;
  }

 private:
  struct Storage {};  // a HeadGram whose storage from_gram() fills

  HeadGram(Storage, Index num_heads, Index head_dim, bool normalize_rows)
      : h_(num_heads), d_(head_dim), normalize_(normalize_rows), chunk_(512) {
    HEADALIGN_CHECK(num_heads > 0, "num_heads (" << num_heads << ") must be positive");
    HEADALIGN_CHECK(head_dim > 0, "head_dim (" << head_dim << ") must be positive");
  }

  void check_gram_shape(Index rows, Index cols) const {
    HEADALIGN_CHECK(rows == dim() && cols == dim(),
                    "the Gram is " << rows << " × " << cols
                                   << ", expected (num_heads · head_dim)² = " << dim() << " × " << dim());
  }

  // Validates the lower triangle of g_ as the Gram of `tokens` real rows (finite, non-negative
  // diagonal, Cauchy–Schwarz) and takes it as this accumulator's statistics.
  void adopt(Index tokens) {
    const Index n = dim();
    for (Index c = 0; c < n; ++c)
      HEADALIGN_CHECK(detail::all_finite(g_.col(c).tail(n - c)), "the Gram contains NaN or Inf");
    const Vector<S> diag = g_.diagonal();
    HEADALIGN_CHECK((diag.array() >= S(0)).all(),
                    "the Gram has a negative diagonal entry (not a Gram of real rows)");
    // Accumulation round-off is below γ_n √(G_aa G_bb); the slack is far looser: this catches garbage, not
    // rounding.
    const S slack =
        S(1.001) + S(64) * std::numeric_limits<S>::epsilon() * static_cast<S>(std::max<Index>(tokens, 1));
    for (Index c = 0; c < n; ++c)
      for (Index r = c + 1; r < n; ++r)
        HEADALIGN_CHECK(std::abs(g_(r, c)) <= slack * std::sqrt(diag(r)) * std::sqrt(diag(c)),
                        "Gram entry ("
                            << r << ", " << c << ") = " << g_(r, c)
                            << " exceeds the Cauchy–Schwarz bound √(G_aa G_bb) (not a Gram of real rows)");
    tokens_ = tokens;
    bound_ = n ? static_cast<double>(diag.maxCoeff()) : 0.0;
  }

  // The largest value an accumulator entry may reach: |G_ij| ≤ max_i G_ii (Cauchy–Schwarz), and
  // bound_ ≥ max_i G_ii is kept, so an add that could push it past this is refused up front.
  static double limit() { return static_cast<double>(std::numeric_limits<S>::max()) / 4; }

  // The bound after n more token rows with entries up to @p largest in magnitude (unit vectors
  // with row normalisation); throws when the Gram could overflow.
  double reserved(Index n, double largest) const {
    const double per_row = normalize_ ? 1.0 : largest * largest;
    const double next = bound_ + static_cast<double>(n) * per_row;
    HEADALIGN_CHECK(
        std::isfinite(next) && next <= limit(),
        "token activations up to |x| = " << largest << " could overflow the " << detail::scalar_name<S>()
                                         << " Gram accumulator (sums of squares up to " << next
                                         << "); accumulate in double (HeadGram<double>) or rescale");
    return next;
  }

  // Accounts for those rows: throws, adding nothing, when the Gram could overflow.
  void reserve(Index n, double largest) { bound_ = reserved(n, largest); }

  // Streams n tokens through a D × chunk buffer: fill(t0, k, buf) writes tokens t0..t0+k−1 as
  // buf's first k columns; rows are normalised per head if asked, then G += buf bufᵀ.
  template <class Fill>
  void accumulate(Index n, Fill&& fill) {
    const Index rows = std::min<Index>(chunk_, std::max<Index>(n, 1));
    Matrix<S> buf(dim(), rows);
    for (Index t0 = 0; t0 < n; t0 += rows) {
      const Index k = std::min(rows, n - t0);
      fill(t0, k, buf);
      if (normalize_) {
        for (Index t = 0; t < k; ++t)
          for (Index h = 0; h < h_; ++h) {
            auto v = buf.col(t).segment(h * d_, d_);
            // In double, so that float vectors of norm 1e-20 or 1e20 neither underflow nor overflow.
            const double norm = v.template cast<double>().norm();
            if (norm > 0) v = (v.template cast<double>() / norm).template cast<S>();
          }
      }
      detail::syrk_lower(g_, buf.data(), k, dim());
    }
    tokens_ += n;
  }

  Index h_, d_;
  bool normalize_;
  Index chunk_;
  Index tokens_ = 0;
  double bound_ = 0;  // an upper bound of max_i G_ii (see reserve())
  Matrix<S> g_;       // lower triangle of G = Σ x xᵀ
};

/// @brief Per-head second moments \f$ \Sigma_h = \sum_t q_{h,t}^\top q_{h,t} \f$ (d × d for each of H
/// heads): the diagonal blocks of a HeadGram, without the H² cross blocks.
///
/// This is the statistic that query-aware key merging needs (merge.hpp, query_metrics()): an
/// inference engine fills it from the pre-RoPE query projections during the same calibration pass
/// that fills the key and value HeadGrams. Memory is H·d² (32 × 128: 4 MB in double) whatever the
/// number of tokens; accumulators over disjoint tokens merge by addition.
/// @code
/// headalign::HeadMoments<double> q(32, 128);
/// for (const auto& batch : query_batches) q.add(batch);   // batch: n × 4096, pre-RoPE queries
/// @endcode
template <class S>
class HeadMoments {
 public:
  using Scalar = S;

  /// @throws invalid_argument when a size is not positive
  HeadMoments(Index num_heads, Index head_dim) : d_(head_dim) {
    HEADALIGN_CHECK(num_heads > 0, "num_heads (" << num_heads << ") must be positive");
    HEADALIGN_CHECK(head_dim > 0, "head_dim (" << head_dim << ") must be positive");
    heads_.assign(static_cast<std::size_t>(num_heads), HeadGram<S>(1, head_dim));
  }

  /// @brief Accumulates token rows: @p tokens is n × (H·d), head h in columns [h·d, (h+1)·d).
  /// @throws invalid_argument when the width is not H·d or the data hold NaN/Inf (nothing is added then)
  template <class Derived>
  void add(const Eigen::MatrixBase<Derived>& tokens) {
    HEADALIGN_CHECK(tokens.cols() == num_heads() * d_,
                    "query rows have " << tokens.cols() << " columns, expected num_heads · head_dim = "
                                       << num_heads() << " · " << d_ << " = " << num_heads() * d_);
    detail::check_finite(tokens, "query activations");
    // Every head's overflow check before any head adds: nothing is added when one would overflow.
    if (tokens.size() > 0)
      for (Index h = 0; h < num_heads(); ++h)
        heads_[static_cast<std::size_t>(h)].reserved(
            tokens.rows(), static_cast<double>(tokens.middleCols(h * d_, d_).cwiseAbs().maxCoeff()));
    for (Index h = 0; h < num_heads(); ++h)
      heads_[static_cast<std::size_t>(h)].add(tokens.middleCols(h * d_, d_));
  }

  /// @brief Accumulates @p rows token rows from a row-major buffer with @p row_stride elements per row.
  template <class T>
  void add(const T* data, Index rows, Index row_stride) {
    HEADALIGN_CHECK(rows >= 0 && row_stride >= num_heads() * d_,
                    "row_stride (" << row_stride << ") is smaller than num_heads · head_dim ("
                                   << num_heads() * d_ << ")");
    using Map = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0,
                           Eigen::OuterStride<>>;
    add(Map(data, rows, num_heads() * d_, Eigen::OuterStride<>(row_stride)));
  }

  /// @brief Adds the moments of another accumulator (disjoint tokens).
  /// @throws invalid_argument when the shapes differ
  void merge(const HeadMoments& other) {
    HEADALIGN_CHECK(other.num_heads() == num_heads() && other.d_ == d_,
                    "cannot merge HeadMoments of " << other.num_heads() << " × " << other.d_ << " into "
                                                   << num_heads() << " × " << d_);
    for (std::size_t h = 0; h < heads_.size(); ++h) heads_[h].merge(other.heads_[h]);
  }

  Index num_heads() const { return static_cast<Index>(heads_.size()); }
  Index head_dim() const { return d_; }
  /// Number of token rows accumulated (for data-free moments: 1, one expectation).
  Index tokens() const { return heads_.front().tokens(); }

  /// @brief \f$ \Sigma_h = \sum_t q_{h,t}^\top q_{h,t} \f$, d × d symmetric.
  /// @throws invalid_argument for a head index out of range
  Matrix<S> block(Index h) const {
    HEADALIGN_CHECK(h >= 0 && h < num_heads(),
                    "head index " << h << " out of range for " << num_heads() << " heads");
    return heads_[static_cast<std::size_t>(h)].block(0, 0);
  }

  /// @brief Data-free moments from the query projection alone: \f$ \Sigma_h = W_h W_h^\top \f$
  /// (whitened inputs, one "average token"; see HeadGram::from_weights()).
  /// @param weights [H·d, hidden], head h owning rows [h·d, (h+1)·d)
  template <class Derived>
  static HeadMoments from_weights(const Eigen::MatrixBase<Derived>& weights, Index num_heads,
                                  Index head_dim) {
    HeadMoments m(num_heads, head_dim);
    HEADALIGN_CHECK(weights.rows() == num_heads * head_dim,
                    "query weights have " << weights.rows() << " rows, expected num_heads · head_dim = "
                                          << num_heads * head_dim);
    for (Index h = 0; h < num_heads; ++h)
      m.heads_[static_cast<std::size_t>(h)] =
          HeadGram<S>::from_weights(weights.middleRows(h * head_dim, head_dim), 1, head_dim);
    return m;
  }

  /// @brief Moments accumulated elsewhere: \f$ \Sigma_h \f$ = @p blocks[h] (d × d, only the lower
  /// triangle is read) over @p tokens query rows, e.g. read back from a file.
  /// @throws invalid_argument for no blocks, blocks of different or non-square shapes, or a block
  ///         that is not the second moment of real rows (see HeadGram::from_gram())
  static HeadMoments from_moments(std::vector<Matrix<S>> blocks, Index tokens) {
    HEADALIGN_CHECK(!blocks.empty(), "HeadMoments::from_moments: no blocks");
    const Index d = blocks.front().rows();
    HeadMoments m(static_cast<Index>(blocks.size()), d);
    for (std::size_t h = 0; h < blocks.size(); ++h) {
      HEADALIGN_CHECK(blocks[h].rows() == d && blocks[h].cols() == d,
                      "HeadMoments::from_moments: block " << h << " is " << blocks[h].rows() << " × "
                                                          << blocks[h].cols() << ", expected " << d << " × "
                                                          << d);
      m.heads_[h] = HeadGram<S>::from_gram(std::move(blocks[h]), 1, d, tokens);
    }
    return m;
  }

 private:
  Index d_;
  std::vector<HeadGram<S>> heads_;  // one single-head Gram per head
};

}  // namespace headalign

#endif  // HEADALIGN_GRAM_HPP
