// The --device parser shared by the CLI and the benchmarks, and the factory's refusals.
#include "kernels/backend_factory.h"

#include <string>

#include "gtest/gtest.h"

namespace deltaserve::kernels {
namespace {

TEST(BackendFactoryTest, ParsesEveryDeviceSpelling) {
  EXPECT_EQ(ParseBackendChoice("cpu")->device, "cpu");
  EXPECT_EQ(ParseBackendChoice("cuda")->device, "cuda");
  EXPECT_EQ(ParseBackendChoice("cuda")->cuda_device, 0);
  EXPECT_EQ(ParseBackendChoice("cuda:3")->device, "cuda");
  EXPECT_EQ(ParseBackendChoice("cuda:3")->cuda_device, 3);
  for (const std::string bad : {"", "tpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:+1",
                                "cuda: 1", "cuda:1x", "cuda:99999999999"}) {
    EXPECT_FALSE(ParseBackendChoice(bad).has_value()) << bad;
  }
}

TEST(BackendFactoryTest, CreatesTheCpuBackendAndRefusesUnknownDevices) {
  std::string error;
  std::unique_ptr<Backend> cpu = CreateBackend({.device = "cpu", .cpu_threads = 1}, &error);
  ASSERT_NE(cpu, nullptr) << error;
  EXPECT_EQ(cpu->name(), "cpu");
  EXPECT_EQ(CreateBackend({.device = "tpu"}, &error), nullptr);
  EXPECT_NE(error.find("tpu"), std::string::npos) << error;
}

}  // namespace
}  // namespace deltaserve::kernels
