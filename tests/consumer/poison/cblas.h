// Stands in front of the real <cblas.h> for the programs that use headalign::headalign alone: the
// math headers must not include it (io/ and the BLAS backend do).
#error "a headalign header outside io/ includes <cblas.h>"
