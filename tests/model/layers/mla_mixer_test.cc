// How the MLA mixer picks a sequence's attention form: absorbed for few new tokens (the expanded
// form rebuilds the whole history's keys and values whatever the new tokens) and for a history
// past the expanded form's key limit (its step buffers grow with the history), expanded otherwise;
// a forced form holds for every sequence.
#include "model/layers/mla_mixer.h"

#include "gtest/gtest.h"

namespace deltaserve::model {
namespace {

using kernels::MlaForm;

TEST(ChooseMlaForm, AutoAbsorbsFewNewTokensAndLongHistoriesAndExpandsTheRest) {
  LayerOptions options;
  options.mla_expanded_max_keys = 10000;
  EXPECT_EQ(ChooseMlaForm(options, 1, 0), MlaForm::kAbsorbed);
  EXPECT_EQ(ChooseMlaForm(options, kMlaAbsorbedMaxNewTokens, 5000), MlaForm::kAbsorbed);
  EXPECT_EQ(ChooseMlaForm(options, kMlaAbsorbedMaxNewTokens + 1, 0), MlaForm::kExpanded);
  EXPECT_EQ(ChooseMlaForm(options, 2000, 8000), MlaForm::kExpanded) << "10,000 keys: at the limit";
  EXPECT_EQ(ChooseMlaForm(options, 2000, 8001), MlaForm::kAbsorbed) << "past the limit";
  EXPECT_EQ(LayerOptions{}.mla_expanded_max_keys, kMlaExpandedMaxKeysDefault);
}

TEST(ChooseMlaForm, AForcedFormHoldsWhateverTheTokens) {
  LayerOptions options;
  options.mla_expanded_max_keys = 100;
  options.mla_form = MlaFormChoice::kExpanded;
  EXPECT_EQ(ChooseMlaForm(options, 1, 1000), MlaForm::kExpanded);
  options.mla_form = MlaFormChoice::kAbsorbed;
  EXPECT_EQ(ChooseMlaForm(options, 5000, 0), MlaForm::kAbsorbed);
}

}  // namespace
}  // namespace deltaserve::model
