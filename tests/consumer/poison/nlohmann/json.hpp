// Stands in front of the real <nlohmann/json.hpp> for the programs that use headalign::headalign alone: the
// math headers must not include it (io/ and the BLAS backend do).
#error "a headalign header outside io/ includes <nlohmann/json.hpp>"
