# Version check of the stand-in Slicer package. As with a Slicer build, every release from the version that
# find_package() asks for onwards is compatible.
# -DSlicerStandIn_VERSION=<x.y.z> on the extension's cmake command line pretends to be another release.
if(NOT DEFINED SlicerStandIn_VERSION)
  set(SlicerStandIn_VERSION "5.10.0")
endif()
set(PACKAGE_VERSION "${SlicerStandIn_VERSION}")
set(PACKAGE_VERSION_COMPATIBLE FALSE)
set(PACKAGE_VERSION_EXACT FALSE)
if(PACKAGE_VERSION VERSION_GREATER_EQUAL PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
endif()
if(PACKAGE_VERSION VERSION_EQUAL PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_EXACT TRUE)
endif()
