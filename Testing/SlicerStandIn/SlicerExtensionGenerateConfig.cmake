# Stand-in for Slicer's CMake/SlicerExtensionGenerateConfig.cmake: writes <Extension>Config.cmake in the build tree
# so that other extensions could find this one.
file(WRITE "${CMAKE_BINARY_DIR}/${EXTENSION_NAME}Config.cmake"
  "set(${EXTENSION_NAME}_SOURCE_DIR \"${CMAKE_SOURCE_DIR}\")\n"
  "set(${EXTENSION_NAME}_BINARY_DIR \"${CMAKE_BINARY_DIR}\")\n"
  )
