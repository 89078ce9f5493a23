// How the MLA mixer picks a sequence's attention form: absorbed for few new tokens (the expanded
// form rebuilds the whole history's keys and values whatever the new tokens) and, where the
// backend expands whole histories at once, for a history past the expanded form's key limit (its
// step buffers grow with the history), expanded otherwise; a forced form holds for every sequence.
#include "model/layers/mla_mixer.h"

#include "gtest/gtest.h"

namespace deltaserve::model {
namespace {

using kernels::MlaForm;

TEST(ChooseMlaForm, AutoAbsorbsFewNewTokensAndLongHistoriesAndExpandsTheRest) {
  LayerOptions options;
  options.mla_expanded_max_keys = 10000;
  EXPECT_EQ(ChooseMlaForm(options, 1, 0, 0), MlaForm::kAbsorbed);
  EXPECT_EQ(ChooseMlaForm(options, kMlaAbsorbedMaxNewTokens, 5000, 0), MlaForm::kAbsorbed);
  EXPECT_EQ(ChooseMlaForm(options, kMlaAbsorbedMaxNewTokens + 1, 0, 0), MlaForm::kExpanded);
  EXPECT_EQ(ChooseMlaForm(options, 2000, 8000, 0), MlaForm::kExpanded) << "10,000 keys: at the limit";
  EXPECT_EQ(ChooseMlaForm(options, 2000, 8001, 0), MlaForm::kAbsorbed) << "past the limit";
  EXPECT_EQ(LayerOptions{}.mla_expanded_max_keys, kMlaExpandedMaxKeysDefault);
}

TEST(ChooseMlaForm, ABackendThatExpandsInWindowsHasNoKeyLimit) {
  LayerOptions options;
  options.mla_expanded_max_keys = 10000;
  EXPECT_EQ(ChooseMlaForm(options, 2000, 1000000, 4096), MlaForm::kExpanded);
  EXPECT_EQ(ChooseMlaForm(options, kMlaAbsorbedMaxNewTokens, 1000000, 4096), MlaForm::kAbsorbed)
      << "few new tokens still take the absorbed form";
}

TEST(ChooseMlaForm, AForcedFormHoldsWhateverTheTokens) {
  LayerOptions options;
  options.mla_expanded_max_keys = 100;
  options.mla_form = MlaFormChoice::kExpanded;
  EXPECT_EQ(ChooseMlaForm(options, 1, 1000, 0), MlaForm::kExpanded);
  options.mla_form = MlaFormChoice::kAbsorbed;
  EXPECT_EQ(ChooseMlaForm(options, 5000, 0, 4096), MlaForm::kAbsorbed);
}

}  // namespace
}  // namespace deltaserve::model
