# Stand-in for the SlicerConfig.cmake of a 3D Slicer build: the variables and files that a scripted-module extension
# uses, so that the extension can be configured, built and installed in CI without building Slicer.
# Names and values follow Slicer's CMake/SlicerConfig.cmake.in and CMake/SlicerDirectories.cmake (Linux layout).
# find_package(Slicer) has already set Slicer_VERSION, Slicer_VERSION_MAJOR and Slicer_VERSION_MINOR from
# SlicerConfigVersion.cmake.

set(Slicer_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")

set(Slicer_USE_PYTHONQT TRUE)
set(Slicer_REVISION "stand-in")
set(Slicer_OS "linux")
set(Slicer_ARCHITECTURE "amd64")
set(Slicer_LICENSE_FILE "${CMAKE_CURRENT_LIST_DIR}/README.md")
set(Slicer_README_FILE "${CMAKE_CURRENT_LIST_DIR}/README.md")

set(Slicer_LIB_DIR "lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_LIB_DIR}/qt-scripted-modules")
set(Slicer_QTLOADABLEMODULES_LIB_DIR "${Slicer_LIB_DIR}/qt-loadable-modules")
set(Slicer_CLIMODULES_LIB_DIR "${Slicer_LIB_DIR}/cli-modules")
set(Slicer_INSTALL_ROOT "./")

# Tests are registered as Slicer registers them, but there is no Slicer to run them: each one fails saying so.
set(Slicer_LAUNCHER_EXECUTABLE "${CMAKE_COMMAND}" -P "${CMAKE_CURRENT_LIST_DIR}/NoSlicerToRunTests.cmake")
