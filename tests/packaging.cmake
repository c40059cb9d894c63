# Installs the built package into a temporary prefix, then configures, builds and runs the
# consumer project against it (find_package) and against the source tree (add_subdirectory).
# Variables: SOURCE_DIR, BINARY_DIR, WORK_DIR, ENABLE_CUDA (this build's HEADALIGN_ENABLE_CUDA, passed
# on so that add_subdirectory does not probe for nvcc again).
file(REMOVE_RECURSE ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/prefix)
foreach(mode find_package subdirectory)
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/${mode} -DCMAKE_BUILD_TYPE=Release
      -DHEADALIGN_CONSUMER_MODE=${mode} -DHEADALIGN_SOURCE_DIR=${SOURCE_DIR} -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
      -DHEADALIGN_ENABLE_CUDA=${ENABLE_CUDA} --no-warn-unused-cli)
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/${mode} -j 2)
  run(${WORK_DIR}/${mode}/consumer)
  if(EXISTS ${WORK_DIR}/${mode}/consumer_blas)
    run(${WORK_DIR}/${mode}/consumer_blas)
  endif()
  if(EXISTS ${WORK_DIR}/${mode}/consumer_cuda)
    run(${WORK_DIR}/${mode}/consumer_cuda)
  endif()
endforeach()
