/// @file interop/xtensor.hpp
/// @brief xtensor interop: zero-copy views between row-major xtensor containers and Eigen, and
/// the main entry points taking xtensor expressions (target `headalign::xtensor`).
///
/// Contiguous row-major containers (`xt::xtensor<T, 2>`, `xt::xarray<T>` of dimension 2, their
/// adaptors) are viewed in place; any other expression (a view, a transpose, a lazy
/// arithmetic expression, column-major storage) is evaluated once into a row-major
/// `xt::xtensor` first. Results come back as `xt::xtensor` where the result is an array.
/// @code
/// #include <headalign/interop/xtensor.hpp>
/// xt::xtensor<double, 2> a = ..., b = ...;                     // n × d activations
/// auto r = headalign::orthogonal_procrustes(a, b);             // rotation with a R ≈ b
/// xt::xtensor<double, 2> rot = headalign::to_xtensor(r.rotation);
/// @endcode
#ifndef HEADALIGN_INTEROP_XTENSOR_HPP
#define HEADALIGN_INTEROP_XTENSOR_HPP

#include "../gram.hpp"
#include "../procrustes.hpp"
#include "../similarity.hpp"

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xtensor.hpp>

#include <array>
#include <type_traits>

namespace headalign {

namespace detail {

template <class E>
using xt_value_t = std::decay_t<typename std::decay_t<E>::value_type>;

/// Whether @p e is a contiguous row-major container that Eigen can map in place.
template <class E>
bool xt_is_row_major_contiguous(const E& e) {
  if constexpr (xt::has_data_interface<E>::value) {
    if (e.layout() != xt::layout_type::row_major) return false;
    // Strides of a row-major contiguous array: the last is 1 (or the extent is 1), and so on.
    std::size_t expected = 1;
    for (std::size_t k = e.dimension(); k-- > 0;) {
      if (e.shape()[k] != 1 && static_cast<std::size_t>(e.strides()[k]) != expected) return false;
      expected *= e.shape()[k];
    }
    return true;
  } else {
    return false;
  }
}

}  // namespace detail

/// @brief A zero-copy row-major Eigen view (`Eigen::Map`) of a contiguous row-major 2-D xtensor
/// container (`xt::xtensor<T, 2>`, a 2-D `xt::xarray<T>`, an adaptor).
/// @throws invalid_argument when @p t is not 2-D, not row-major or not contiguous
template <class E>
auto as_eigen(E& t) {
  using T = detail::xt_value_t<E>;
  using Map =
      Eigen::Map<std::conditional_t<std::is_const<E>::value,
                                    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                                    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>>;
  HEADALIGN_CHECK(t.dimension() == 2,
                  "as_eigen: the array has " << t.dimension() << " dimensions, expected 2");
  HEADALIGN_CHECK(detail::xt_is_row_major_contiguous(t),
                  "as_eigen: the array is not contiguous and row-major");
  return Map(t.data() + t.data_offset(), static_cast<Index>(t.shape()[0]), static_cast<Index>(t.shape()[1]));
}

/// @brief A zero-copy 2-D xtensor view of an Eigen matrix's storage (row-major or column-major
/// layout as the matrix has it); it is valid while the matrix lives and is not resized.
template <class Derived>
auto as_xtensor(Eigen::PlainObjectBase<Derived>& m) {
  const std::array<std::size_t, 2> shape = {static_cast<std::size_t>(m.rows()),
                                            static_cast<std::size_t>(m.cols())};
  const std::array<std::size_t, 2> strides =
      Derived::IsRowMajor ? std::array<std::size_t, 2>{static_cast<std::size_t>(m.cols()), 1}
                          : std::array<std::size_t, 2>{1, static_cast<std::size_t>(m.rows())};
  return xt::adapt(m.data(), static_cast<std::size_t>(m.size()), xt::no_ownership(), shape, strides);
}

/// @brief A row-major `xt::xtensor` copy of an Eigen matrix (e.g. a rotation to hand back).
template <class Derived>
xt::xtensor<typename Derived::Scalar, 2> to_xtensor(const Eigen::MatrixBase<Derived>& m) {
  xt::xtensor<typename Derived::Scalar, 2> out(
      {static_cast<std::size_t>(m.rows()), static_cast<std::size_t>(m.cols())});
  Eigen::Map<Eigen::Matrix<typename Derived::Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      out.data(), m.rows(), m.cols()) = m;
  return out;
}

/// @brief Calls @p f with a row-major Eigen view of the 2-D expression @p e: in place for a
/// contiguous row-major container, else of a row-major copy.
template <class E, class F>
decltype(auto) with_eigen(const xt::xexpression<E>& e, F&& f) {
  const E& x = e.derived_cast();
  HEADALIGN_CHECK(x.dimension() == 2,
                  "headalign: expected a 2-D array, got " << x.dimension() << " dimensions");
  if constexpr (xt::has_data_interface<E>::value) {
    if (detail::xt_is_row_major_contiguous(x)) return f(as_eigen(x));
  }
  const xt::xtensor<detail::xt_value_t<E>, 2, xt::layout_type::row_major> copy = x;
  return f(as_eigen(copy));
}

/// @brief procrustes() of an xtensor expression M (d × d): maximises tr(Rᵀ M) over the alignment's set.
template <class E>
ProcrustesResult<detail::xt_value_t<E>> procrustes(const xt::xexpression<E>& m,
                                                   Alignment alignment = Alignment::Orthogonal,
                                                   RopeSpec rope = {}, ProcrustesOptions options = {}) {
  return with_eigen(m, [&](const auto& mm) { return procrustes(mm, alignment, rope, options); });
}

/// @brief procrustes_score() of an xtensor expression (singular values only).
template <class E>
detail::xt_value_t<E> procrustes_score(const xt::xexpression<E>& m, Alignment alignment, RopeSpec rope = {},
                                       ProcrustesOptions options = {}) {
  return with_eigen(m, [&](const auto& mm) { return procrustes_score(mm, alignment, rope, options); });
}

/// @brief orthogonal_procrustes() of two xtensor expressions A, B (n × d, SciPy's convention:
/// R minimises ‖A R − B‖_F).
template <class EA, class EB>
ProcrustesResult<detail::xt_value_t<EA>> orthogonal_procrustes(const xt::xexpression<EA>& a,
                                                               const xt::xexpression<EB>& b) {
  return with_eigen(a, [&](const auto& am) {
    return with_eigen(b, [&](const auto& bm) {
      return orthogonal_procrustes(am, bm.template cast<detail::xt_value_t<EA>>());
    });
  });
}

/// @brief HeadGram::add() of an xtensor expression of token rows, n × (H·d) (any float type; a
/// contiguous row-major container is accumulated in place, without a copy).
template <class S, class E>
void add(HeadGram<S>& g, const xt::xexpression<E>& tokens) {
  with_eigen(tokens, [&](const auto& t) {
    g.add(t);
    return 0;
  });
}

/// @brief A HeadGram from stored activations `[H, n, d]` (the reference's layout) given as an
/// xtensor expression (HeadGram::from_activations()).
/// @throws invalid_argument when the expression is not 3-D or holds NaN/Inf
template <class S, class E>
HeadGram<S> gram_from_activations(const xt::xexpression<E>& activations, bool normalize_rows = false) {
  const E& x = activations.derived_cast();
  HEADALIGN_CHECK(x.dimension() == 3, "gram_from_activations: expected [heads, tokens, head_dim], got "
                                          << x.dimension() << " dimensions");
  const xt::xtensor<detail::xt_value_t<E>, 3, xt::layout_type::row_major> c =
      x;  // evaluated once (a copy only if needed)
  return HeadGram<S>::from_activations(c.data(), static_cast<Index>(c.shape()[0]),
                                       static_cast<Index>(c.shape()[1]), static_cast<Index>(c.shape()[2]),
                                       normalize_rows);
}

/// @brief similarity_matrix() of stored activations `[H, n, d]` given as an xtensor expression,
/// returned as an H × H `xt::xtensor` (the Gram is accumulated in double).
/// @param normalize_rows the `cos` criterion's row normalisation
template <class E>
xt::xtensor<double, 2> similarity_matrix(const xt::xexpression<E>& activations, Alignment alignment,
                                         Metric metric, RopeSpec rope = {}, bool normalize_rows = true) {
  return to_xtensor(
      similarity_matrix(gram_from_activations<double>(activations, normalize_rows), alignment, metric, rope));
}

/// @brief similarity_matrix() of a HeadGram, returned as an `xt::xtensor`.
template <class S>
xt::xtensor<S, 2> similarity_xtensor(const HeadGram<S>& g, Alignment alignment, Metric metric,
                                     RopeSpec rope = {}) {
  return to_xtensor(similarity_matrix(g, alignment, metric, rope));
}

}  // namespace headalign

#endif  // HEADALIGN_INTEROP_XTENSOR_HPP
