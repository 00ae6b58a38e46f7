# qtool_add_stage(<stage> DEPS <targets...>)
# Builds src/<stage>/*.cc into the static library qtool_<stage> with public headers in
# include/qtool/<stage>/. A stage without sources yet becomes an INTERFACE library so that
# later stages can already depend on it.
function(qtool_add_stage stage)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  file(GLOB_RECURSE srcs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/${stage}/*.cc)
  if(srcs)
    add_library(qtool_${stage} STATIC ${srcs})
    target_include_directories(qtool_${stage} PUBLIC ${PROJECT_SOURCE_DIR}/include)
    target_include_directories(qtool_${stage} SYSTEM PRIVATE ${STB_INCLUDE_DIR})
    target_link_libraries(qtool_${stage} PUBLIC ${ARG_DEPS})
  else()
    add_library(qtool_${stage} INTERFACE)
    target_include_directories(qtool_${stage} INTERFACE ${PROJECT_SOURCE_DIR}/include)
    target_link_libraries(qtool_${stage} INTERFACE ${ARG_DEPS})
  endif()
endfunction()
