// Stands in front of the real <sys/mman.h> for the programs that use headalign::headalign alone: the
// math headers must not include it (io/ and the BLAS backend do).
#error "a headalign header outside io/ includes <sys/mman.h>"
