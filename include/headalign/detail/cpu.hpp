/// @file detail/cpu.hpp
/// @brief Run-time CPU dispatch: where the AVX2 kernels exist and whether this CPU runs them.
///
/// The SIMD kernels (detail/swap_search.hpp, detail/simd_bidiagonal.hpp) are compiled with
/// function-level `target("avx2,fma")` attributes, so a build needs no global flags and a binary
/// runs everywhere: the kernels are called only after cpu_has_avx2_fma().
#ifndef HEADALIGN_DETAIL_CPU_HPP
#define HEADALIGN_DETAIL_CPU_HPP

/// 1 where GCC or Clang compile for x86-64, so that AVX2 kernels with function-level target
/// attributes can be built and chosen at run time; 0 elsewhere (the portable paths only).
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define HEADALIGN_X86_DISPATCH 1
#else
#define HEADALIGN_X86_DISPATCH 0
#endif

namespace headalign {
namespace detail {

#if HEADALIGN_X86_DISPATCH
/// Whether this CPU runs AVX2 + FMA code (checked once).
inline bool cpu_has_avx2_fma() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}
#else
inline bool cpu_has_avx2_fma() { return false; }
#endif

}  // namespace detail
}  // namespace headalign

#endif  // HEADALIGN_DETAIL_CPU_HPP
