/// @file instantiate.hpp
/// @brief Include in exactly one translation unit of a project that defines
/// HEADALIGN_EXTERN_TEMPLATES elsewhere: it compiles the SVD-heavy internals once, for float and
/// double, instead of in every unit.
#ifndef HEADALIGN_INSTANTIATE_HPP
#define HEADALIGN_INSTANTIATE_HPP

#define HEADALIGN_INSTANTIATE
#include "procrustes.hpp"

namespace headalign {
HEADALIGN_PROCRUSTES_INSTANTIATIONS(, float)
HEADALIGN_PROCRUSTES_INSTANTIATIONS(, double)
}  // namespace headalign

#endif  // HEADALIGN_INSTANTIATE_HPP
