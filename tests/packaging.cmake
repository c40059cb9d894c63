# Installs the built package into a temporary prefix, then configures, builds and runs the
# consumer project against it (find_package) and against the source tree (add_subdirectory).
# With find_package, Eigen comes from a scratch copy (its headers and its relocatable package
# config), so that the math headers are compiled with an include path holding Eigen alone
# besides headalign (and the consumer's poison headers, tests/consumer/CMakeLists.txt).
# Variables: SOURCE_DIR, BINARY_DIR, WORK_DIR, EIGEN_DIR (Eigen3_DIR of this build), ENABLE_CUDA
# (this build's HEADALIGN_ENABLE_CUDA, passed on so that add_subdirectory does not probe for nvcc again).
file(REMOVE_RECURSE ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/prefix)

# Eigen alone in a scratch prefix: <prefix>/include/eigen3 and <prefix>/share/eigen3/cmake.
get_filename_component(eigen_prefix "${EIGEN_DIR}/../../.." ABSOLUTE)
if(NOT EXISTS ${eigen_prefix}/include/eigen3/Eigen/Core)
  message(FATAL_ERROR "Eigen's headers are not at ${eigen_prefix}/include/eigen3 (Eigen3_DIR = ${EIGEN_DIR})")
endif()
file(COPY ${eigen_prefix}/include/eigen3 DESTINATION ${WORK_DIR}/eigen/include)
file(COPY ${EIGEN_DIR}/ DESTINATION ${WORK_DIR}/eigen/share/eigen3/cmake)

foreach(mode find_package subdirectory)
  set(extra)
  if(mode STREQUAL "find_package")
    set(extra -DEigen3_DIR=${WORK_DIR}/eigen/share/eigen3/cmake -DHEADALIGN_CHECK_HEADERS=ON)
  endif()
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/${mode} -DCMAKE_BUILD_TYPE=Release
      -DHEADALIGN_CONSUMER_MODE=${mode} -DHEADALIGN_SOURCE_DIR=${SOURCE_DIR} -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
      -DHEADALIGN_ENABLE_CUDA=${ENABLE_CUDA} ${extra} --no-warn-unused-cli)
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/${mode} -j 2)
  if(mode STREQUAL "find_package")
    # The consumer's include path: headalign's prefix, the scratch Eigen and the poison, nothing else.
    file(STRINGS ${WORK_DIR}/${mode}/CMakeFiles/consumer.dir/flags.make includes REGEX "^CXX_INCLUDES")
    string(REGEX MATCHALL "-(I|isystem) *[^ ]+" dirs "${includes}")
    foreach(d IN LISTS dirs)
      string(REGEX REPLACE "^-(I|isystem) *" "" d "${d}")
      if(NOT d MATCHES "^(${WORK_DIR}/prefix/include|${WORK_DIR}/eigen/include/eigen3|${SOURCE_DIR}/tests/consumer/poison)$")
        message(FATAL_ERROR "the consumer of headalign::headalign has '${d}' on its include path")
      endif()
    endforeach()
    message(STATUS "consumer include path: ${dirs}")
  endif()
  foreach(program consumer consumer_io consumer_blas consumer_cuda)
    if(EXISTS ${WORK_DIR}/${mode}/${program})
      run(${WORK_DIR}/${mode}/${program} ${WORK_DIR})
    endif()
  endforeach()
endforeach()
