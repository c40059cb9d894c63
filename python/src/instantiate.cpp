// Compiles the SVD-heavy internals (Procrustes, polar factors) once for the extension; core.cpp and
// pipeline.cpp declare them extern (HEADALIGN_EXTERN_TEMPLATES).
#include <headalign/instantiate.hpp>
