/// @file headalign.hpp
/// @brief Umbrella header of the CPU library: the math of every stage, which needs Eigen only (not
/// the file formats of io/, not the CUDA backend, not the interop headers).
#ifndef HEADALIGN_HEADALIGN_HPP
#define HEADALIGN_HEADALIGN_HPP

#include "config.hpp"
#include "gate_mixture.hpp"
#include "gpa.hpp"
#include "gram.hpp"
#include "grouping.hpp"
#include "hard_concrete.hpp"
#include "merge.hpp"
#include "merge_aware.hpp"
#include "merge_error.hpp"
#include "pipeline.hpp"
#include "procrustes.hpp"
#include "rope.hpp"
#include "similarity.hpp"
#include "transforms.hpp"

#endif  // HEADALIGN_HEADALIGN_HPP
