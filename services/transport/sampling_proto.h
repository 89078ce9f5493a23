// Sampling parameters on the internal wire, converted to and from the model's type.
#pragma once

#include "deltaserve/internal/v1/worker.pb.h"
#include "model/sampling/sampling_params.h"

namespace deltaserve::services {

model::SamplingParams FromProto(const internal::v1::SamplingParams& proto);
void ToProto(const model::SamplingParams& params, internal::v1::SamplingParams* proto);

}  // namespace deltaserve::services
