/// @file headalign.hpp
/// @brief Umbrella header of the CPU library: the math of every stage, which needs Eigen only (not
/// the file formats of io/, not the CUDA backend, not the interop headers).
#ifndef HEADALIGN_HEADALIGN_HPP
#define HEADALIGN_HEADALIGN_HPP

#include "config.hpp"
#include "rope.hpp"
#include "procrustes.hpp"
#include "gram.hpp"
#include "similarity.hpp"
#include "grouping.hpp"
#include "gpa.hpp"
#include "transforms.hpp"
#include "merge.hpp"
#include "merge_error.hpp"
#include "merge_aware.hpp"
#include "hard_concrete.hpp"
#include "gate_mixture.hpp"
#include "pipeline.hpp"

#endif  // HEADALIGN_HEADALIGN_HPP
