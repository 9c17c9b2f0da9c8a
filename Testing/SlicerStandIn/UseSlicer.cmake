# Stand-in for the use file of a Slicer build (Slicer's CMake/UseSlicer.cmake.in): extension name, install folders,
# CTest, and the macros a scripted-module extension calls, with the signatures, test names and checks of Slicer's
# SlicerMacroBuildScriptedModule.cmake and SlicerMacroPythonTesting.cmake and CTK's ctkMacroCompilePythonScript.cmake.

include(CMakeParseArguments)

if(NOT EXTENSION_NAME)
  set(EXTENSION_NAME "${PROJECT_NAME}")
endif()
if(EXTENSION_NAME STREQUAL "" OR EXTENSION_NAME STREQUAL "Slicer" OR EXTENSION_NAME STREQUAL "Project")
  message(FATAL_ERROR "Call project(<extension name>) before include(\${Slicer_USE_FILE})")
endif()

# Extensions are installed in the same layout as Slicer itself (Linux: no bundle prefix).
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_INSTALL_ROOT}${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")

# Defaults of the optional extension metadata: (variable, default) pairs.
foreach(pair IN ITEMS "DEPENDS|NA" "BUILD_SUBDIRECTORY|." "ENABLED|1" "LICENSE_FILE|${Slicer_LICENSE_FILE}"
                      "README_FILE|${Slicer_README_FILE}")
  string(REPLACE "|" ";" pair "${pair}")
  list(GET pair 0 name)
  list(LENGTH pair length)
  set(default "")
  if(length GREATER 1)
    list(GET pair 1 default)
  endif()
  if(NOT DEFINED EXTENSION_${name})
    set(EXTENSION_${name} "${default}")
  endif()
endforeach()

include(CTest)

#-----------------------------------------------------------------------------
# Python tests. Names (py_<prefix><script name>), launcher arguments and RUN_SERIAL are Slicer's. Slicer registers
# a test whose script is missing and only fails when it runs; the stand-in refuses it at configure time.

function(_slicer_stand_in_require_test_script script)
  foreach(folder "" "${CMAKE_CURRENT_SOURCE_DIR}/" "${CMAKE_CURRENT_BINARY_DIR}/")
    if(EXISTS "${folder}${script}")
      return()
    endif()
  endforeach()
  message(FATAL_ERROR "Python test script not found: ${script} (in ${CMAKE_CURRENT_SOURCE_DIR})")
endfunction()

# Slicer gives the extension's module folders to the launcher unless the test disables that kind of module.
function(_slicer_stand_in_module_path_arguments arguments_var)
  set(paths)
  foreach(kind_folder IN ITEMS "scripted-loadable|QTSCRIPTEDMODULES" "cli|CLIMODULES" "loadable|QTLOADABLEMODULES")
    string(REPLACE "|" ";" kind_folder "${kind_folder}")
    list(GET kind_folder 0 kind)
    list(GET kind_folder 1 folder)
    if(NOT "--disable-${kind}-modules" IN_LIST ${arguments_var})
      list(APPEND paths "${CMAKE_BINARY_DIR}/${Slicer_${folder}_LIB_DIR}")
    endif()
  endforeach()
  if(paths AND NOT "--disable-modules" IN_LIST ${arguments_var})
    set(${arguments_var} ${${arguments_var}} --additional-module-paths ${paths} PARENT_SCOPE)
  endif()
endfunction()

macro(slicer_add_python_test)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS;SCRIPT_ARGS" ${ARGN})
  _slicer_stand_in_require_test_script("${MY_SCRIPT}")
  get_filename_component(_test_name "${MY_SCRIPT}" NAME_WE)
  get_filename_component(_script "${MY_SCRIPT}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  _slicer_stand_in_module_path_arguments(MY_SLICER_ARGS)
  add_test(NAME py_${MY_TESTNAME_PREFIX}${_test_name}
    COMMAND ${Slicer_LAUNCHER_EXECUTABLE} --no-splash --testing ${MY_SLICER_ARGS}
            --python-script "${_script}" ${MY_SCRIPT_ARGS})
  set_property(TEST py_${MY_TESTNAME_PREFIX}${_test_name} PROPERTY RUN_SERIAL TRUE)
endmacro()

macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS" ${ARGN})
  _slicer_stand_in_require_test_script("${MY_SCRIPT}")
  get_filename_component(_test_name "${MY_SCRIPT}" NAME_WE)
  get_filename_component(_script_dir "${MY_SCRIPT}" DIRECTORY)
  if(_script_dir STREQUAL "")
    set(_script_dir "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  _slicer_stand_in_module_path_arguments(MY_SLICER_ARGS)
  set(_run_unit_test
    "import slicer.testing\\; slicer.testing.runUnitTest(['${CMAKE_CURRENT_BINARY_DIR}', '${_script_dir}'], '${_test_name}')")
  add_test(NAME py_${MY_TESTNAME_PREFIX}${_test_name}
    COMMAND ${Slicer_LAUNCHER_EXECUTABLE} --no-splash --testing ${MY_SLICER_ARGS} --python-code "${_run_unit_test}")
  set_property(TEST py_${MY_TESTNAME_PREFIX}${_test_name} PROPERTY RUN_SERIAL TRUE)
endmacro()

#-----------------------------------------------------------------------------
# Scripted module: every listed script and resource must exist (a script may be named without ".py"); each is
# copied into <build>/<Slicer_QTSCRIPTEDMODULES_LIB_DIR> by a build command of its own and installed from there.
# The copy commands have no VERBATIM, as in CTK: a file name that the shell would split or reject fails to build
# here as it does in a Slicer build. Python files are not byte-compiled.

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: unknown arguments ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT MY_SLICER_NAME)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: NAME is required")
  endif()

  set(_module_dir "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(_subdir "${CMAKE_CURRENT_SOURCE_DIR}" NAME)
    string(APPEND _module_dir "/${_subdir}")
  endif()

  foreach(_kind IN ITEMS SCRIPTS RESOURCES)
    set(_copies)
    foreach(_file IN LISTS MY_SLICER_${_kind})
      get_filename_component(_source "${_file}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
      if(_kind STREQUAL "SCRIPTS" AND NOT EXISTS "${_source}" AND EXISTS "${_source}.py")
        string(APPEND _file ".py")
        string(APPEND _source ".py")
      endif()
      if(NOT EXISTS "${_source}")
        message(FATAL_ERROR "slicerMacroBuildScriptedModule(${_kind}) lists a file that does not exist: ${_file}")
      endif()
      if(IS_ABSOLUTE "${_file}")
        file(RELATIVE_PATH _file "${CMAKE_CURRENT_BINARY_DIR}" "${_file}")
      endif()
      set(_copy ${_module_dir}/${_file})
      add_custom_command(OUTPUT ${_copy}
        COMMAND ${CMAKE_COMMAND} -E copy ${_source} ${_copy}
        DEPENDS ${_source}
        COMMENT "Copying python ${_kind}: ${_file}")
      list(APPEND _copies ${_copy})
    endforeach()
    if(_copies)
      string(TOLOWER "${_kind}" _kind_name)
      add_custom_target(Copy${MY_SLICER_NAME}Python${_kind_name} ALL DEPENDS ${_copies})
    endif()
  endforeach()

  if(MY_SLICER_WITH_SUBDIR)
    install(DIRECTORY "${_module_dir}" DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
      COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
  else()
    install(DIRECTORY "${_module_dir}/" DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
      COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
  endif()

  # Slicer configures qSlicer<Module>ModuleGenericTest.py from a template; the stand-in writes a placeholder of
  # that name and registers it as Slicer does.
  if(BUILD_TESTING AND MY_SLICER_WITH_GENERIC_TESTS)
    set(_generic_test "qSlicer${MY_SLICER_NAME}ModuleGenericTest.py")
    file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/${_generic_test}" "# placeholder of Slicer's generic module tests\n")
    slicer_add_python_unittest(
      SCRIPT ${_generic_test}
      SLICER_ARGS --no-main-window --disable-cli-modules --additional-module-path ${_module_dir}
      TESTNAME_PREFIX nomainwindow_)
  endif()
endmacro()
