// Names of the session store's enums, for messages and logs.
#include "services/session_store/store_types.h"

namespace deltaserve::services {

const char* PartKindName(PartKind kind) {
  switch (kind) {
    case PartKind::kState:
      return "STATE";
    case PartKind::kBlob:
      return "BLOB";
  }
  return "UNKNOWN";
}

}  // namespace deltaserve::services
