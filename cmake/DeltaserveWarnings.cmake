# deltaserve_target_defaults(<target>): warning flags for C++ sources and the include root.
function(deltaserve_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow>
    # GCC 12 reports false -Wrestrict positives inside std::string at -O3 (GCC bug 105329).
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wno-restrict>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${DELTASERVE_WERROR}>>:-Werror>)
endfunction()

# deltaserve_library(<name> <alias path> SOURCES ... DEPS ...): one library target per folder,
# named deltaserve_<path>, aliased deltaserve::<path>, with the repository root on its include path.
function(deltaserve_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  string(REPLACE "deltaserve_" "" alias_suffix ${name})
  add_library(deltaserve::${alias_suffix} ALIAS ${name})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  deltaserve_target_defaults(${name})
endfunction()
