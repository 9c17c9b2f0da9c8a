# Stand-in for Slicer's CMake/SlicerExtensionCPack.cmake: the checks it makes before packaging, and the extension
# description file (<Extension>.s4ext) written from the EXTENSION_* metadata. No package is made.

foreach(_required IN ITEMS EXTENSION_NAME Slicer_REVISION Slicer_OS Slicer_ARCHITECTURE)
  if("${${_required}}" STREQUAL "")
    message(FATAL_ERROR "${_required} must not be empty")
  endif()
endforeach()

if(NOT EXTENSION_NAME STREQUAL PROJECT_NAME)
  message(STATUS "Not packaging ${PROJECT_NAME}: it is not the extension ${EXTENSION_NAME}")
  return()
endif()

foreach(_file IN ITEMS EXTENSION_README_FILE EXTENSION_LICENSE_FILE)
  if(NOT EXISTS "${${_file}}")
    message(FATAL_ERROR "${_file} names a file that does not exist: ${${_file}}")
  endif()
endforeach()

set(_description "")
foreach(_name IN ITEMS HOMEPAGE CATEGORY CONTRIBUTORS DESCRIPTION ICONURL SCREENSHOTURLS DEPENDS BUILD_SUBDIRECTORY ENABLED)
  string(TOLOWER "${_name}" _key)
  string(REPLACE "_" "" _key "${_key}")
  string(REPLACE ";" " " _value "${EXTENSION_${_name}}")
  string(APPEND _description "${_key} ${_value}\n")
endforeach()
file(WRITE "${CMAKE_BINARY_DIR}/${EXTENSION_NAME}.s4ext" "${_description}")
