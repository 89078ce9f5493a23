// How the MLA mixer picks a sequence's attention form: absorbed for few new tokens (the expanded
// form rebuilds the whole history's keys and values whatever the new tokens) and, where the
// backend expands whole histories at once, for a history past the expanded form's key limit (its
// step buffers grow with the history), expanded otherwise; a forced form holds for every sequence.
#include "model/layers/mla_mixer.h"

#include "gtest/gtest.h"

namespace deltaserve::model {
namespace {

using kernels::MlaForm;

// The CPU backend's limits: the absorbed form up to 128 new tokens, whole histories expanded.
constexpr kernels::MlaFormLimits kWhole{.absorbed_max_new_tokens = 128, .expanded_window_keys = 0};
// A backend that expands in windows of 4,096 keys, the absorbed form up to 64 new tokens.
constexpr kernels::MlaFormLimits kWindows{.absorbed_max_new_tokens = 64, .expanded_window_keys = 4096};

TEST(ChooseMlaForm, AutoAbsorbsFewNewTokensAndLongHistoriesAndExpandsTheRest) {
  LayerOptions options;
  options.mla_expanded_max_keys = 10000;
  EXPECT_EQ(ChooseMlaForm(options, 1, 0, kWhole), MlaForm::kAbsorbed);
  EXPECT_EQ(ChooseMlaForm(options, 128, 5000, kWhole), MlaForm::kAbsorbed);
  EXPECT_EQ(ChooseMlaForm(options, 129, 0, kWhole), MlaForm::kExpanded);
  EXPECT_EQ(ChooseMlaForm(options, 2000, 8000, kWhole), MlaForm::kExpanded) << "10,000 keys: at the limit";
  EXPECT_EQ(ChooseMlaForm(options, 2000, 8001, kWhole), MlaForm::kAbsorbed) << "past the limit";
  EXPECT_EQ(LayerOptions{}.mla_expanded_max_keys, kMlaExpandedMaxKeysDefault);
  EXPECT_EQ(kernels::MlaFormLimits{}.absorbed_max_new_tokens, 128) << "a backend's default";
}

TEST(ChooseMlaForm, ABackendThatExpandsInWindowsHasNoKeyLimitAndItsOwnThreshold) {
  LayerOptions options;
  options.mla_expanded_max_keys = 10000;
  EXPECT_EQ(ChooseMlaForm(options, 2000, 1000000, kWindows), MlaForm::kExpanded);
  EXPECT_EQ(ChooseMlaForm(options, 65, 1000000, kWindows), MlaForm::kExpanded);
  EXPECT_EQ(ChooseMlaForm(options, 64, 1000000, kWindows), MlaForm::kAbsorbed)
      << "few new tokens still take the absorbed form";
}

TEST(ChooseMlaForm, AForcedFormHoldsWhateverTheTokens) {
  LayerOptions options;
  options.mla_expanded_max_keys = 100;
  options.mla_form = MlaFormChoice::kExpanded;
  EXPECT_EQ(ChooseMlaForm(options, 1, 1000, kWhole), MlaForm::kExpanded);
  options.mla_form = MlaFormChoice::kAbsorbed;
  EXPECT_EQ(ChooseMlaForm(options, 5000, 0, kWindows), MlaForm::kAbsorbed);
}

}  // namespace
}  // namespace deltaserve::model
