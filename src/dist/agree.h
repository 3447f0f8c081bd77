// Agreement across ranks: turning one rank's failure into every rank's, and
// checking that every rank was started the same way. Both are collectives:
// every rank calls them at the same point.
#pragma once

#include <string>

#include "core/status.h"
#include "dist/communicator.h"

namespace mingpt {

// The message of the error AgreeOnStatus returns on ranks that did not fail
// themselves (or did, but a lower rank failed too): the failing rank reports.
inline constexpr char kPeerFailedMessage[] = "stopped because another rank failed";

// Every rank learns whether any rank failed. The lowest failing rank gets its
// own error back (prefixed with "rank r: " for r > 0); every other rank
// gets kPeerFailedMessage. All OK: OK everywhere.
Status AgreeOnStatus(Communicator* comm, const Status& local);

// True for the errors that some other rank has already reported.
inline bool IsPeerFailure(const Status& s) { return !s.ok() && s.message() == kPeerFailedMessage; }

// Rank `root`'s *value on every rank.
void BroadcastString(Communicator* comm, std::string* value, int root = 0);

// Checks that `value` (a canonical description of the configuration) is the
// same on every rank as on rank 0. Error on every rank otherwise, naming the
// ranks that differ.
Status CheckSameOnAllRanks(Communicator* comm, const std::string& what, const std::string& value);

}  // namespace mingpt
