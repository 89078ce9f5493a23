# Every dependency comes from Debian packages (tools/install_deps.sh installs them).
find_package(absl CONFIG REQUIRED)
find_package(nlohmann_json 3.11 REQUIRED)
find_package(spdlog REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(Threads REQUIRED)
find_package(ZLIB REQUIRED)

# OpenBLAS through its CBLAS interface (Debian ships a CMake config, without a target).
find_package(OpenBLAS CONFIG REQUIRED)
add_library(deltaserve_openblas INTERFACE)
target_include_directories(deltaserve_openblas SYSTEM INTERFACE ${OpenBLAS_INCLUDE_DIRS})
target_link_libraries(deltaserve_openblas INTERFACE ${OpenBLAS_LIBRARIES})

if(DELTASERVE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(DELTASERVE_BUILD_BENCHMARKS)
  find_package(benchmark REQUIRED)
endif()

# gRPC and Protocol Buffers (Debian: protobuf has no CONFIG package; use Debian's protoc with
# Debian's gRPC plugin).
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)
