// Tests for services/common/tenancy.h: metadata parsing and tenant id validation.
#include "services/common/tenancy.h"

#include <grpcpp/test/server_context_test_spouse.h>
#include <gtest/gtest.h>

#include <string>

namespace deltaserve::services {
namespace {

absl::StatusOr<std::string> TenantWith(std::initializer_list<std::string> values) {
  grpc::ServerContext context;
  grpc::testing::ServerContextTestSpouse spouse(&context);
  for (const std::string& value : values) spouse.AddClientMetadata(kTenantMetadataKey, value);
  return TenantOf(context);
}

TEST(TenancyTest, AbsentIsDefault) {
  const absl::StatusOr<std::string> tenant = TenantWith({});
  ASSERT_TRUE(tenant.ok()) << tenant.status();
  EXPECT_EQ(*tenant, "default");
}

TEST(TenancyTest, ReadsTheHeader) {
  const absl::StatusOr<std::string> tenant = TenantWith({"Acme-prod_1.eu"});
  ASSERT_TRUE(tenant.ok()) << tenant.status();
  EXPECT_EQ(*tenant, "Acme-prod_1.eu");
}

TEST(TenancyTest, OtherMetadataIsIgnored) {
  grpc::ServerContext context;
  grpc::testing::ServerContextTestSpouse spouse(&context);
  spouse.AddClientMetadata("x-deltaserve-tenant-extra", "bad value!");
  const absl::StatusOr<std::string> tenant = TenantOf(context);
  ASSERT_TRUE(tenant.ok()) << tenant.status();
  EXPECT_EQ(*tenant, "default");
}

TEST(TenancyTest, RejectsBadValues) {
  for (const std::string& bad :
       {std::string(), std::string("a b"), std::string("../etc"), std::string(".hidden"),
        std::string("-dash"), std::string("ten/ant"), std::string("t\n"),
        std::string("\xc3\xa9t\xc3\xa9"), std::string(kMaxTenantChars + 1, 'a')}) {
    const absl::StatusOr<std::string> tenant = TenantWith({bad});
    EXPECT_EQ(tenant.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(std::string(tenant.status().message()).find(kTenantMetadataKey), std::string::npos);
  }
  EXPECT_TRUE(TenantWith({std::string(kMaxTenantChars, 'a')}).ok());
}

TEST(TenancyTest, RejectsRepeatedHeader) {
  const absl::StatusOr<std::string> tenant = TenantWith({"a", "b"});
  EXPECT_EQ(tenant.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(tenant.status().message()).find("more than once"), std::string::npos);
}

TEST(TenancyTest, ValidateTenantMessages) {
  EXPECT_TRUE(ValidateTenant("default").ok());
  const absl::Status status = ValidateTenant("a*b");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(status.message()).find("0x2a at offset 1"), std::string::npos) << status;
}

}  // namespace
}  // namespace deltaserve::services
