#include "services/transport/sampling_proto.h"

namespace deltaserve::services {

model::SamplingParams FromProto(const internal::v1::SamplingParams& proto) {
  model::SamplingParams params;
  params.temperature = proto.temperature();
  params.top_k = proto.top_k();
  params.top_p = proto.top_p();
  params.min_p = proto.min_p();
  if (proto.has_seed()) params.seed = proto.seed();
  params.repetition_penalty = proto.repetition_penalty();
  params.frequency_penalty = proto.frequency_penalty();
  params.presence_penalty = proto.presence_penalty();
  params.stop_token_ids.assign(proto.stop_token_ids().begin(), proto.stop_token_ids().end());
  params.ignore_eos = proto.ignore_eos();
  params.max_new_tokens = proto.max_new_tokens();
  return params;
}

void ToProto(const model::SamplingParams& params, internal::v1::SamplingParams* proto) {
  proto->set_temperature(params.temperature);
  proto->set_top_k(params.top_k);
  proto->set_top_p(params.top_p);
  proto->set_min_p(params.min_p);
  proto->set_has_seed(params.seed.has_value());
  proto->set_seed(params.seed.value_or(0));
  proto->set_repetition_penalty(params.repetition_penalty);
  proto->set_frequency_penalty(params.frequency_penalty);
  proto->set_presence_penalty(params.presence_penalty);
  proto->mutable_stop_token_ids()->Assign(params.stop_token_ids.begin(), params.stop_token_ids.end());
  proto->set_ignore_eos(params.ignore_eos);
  proto->set_max_new_tokens(params.max_new_tokens);
}

}  // namespace deltaserve::services
