// Agreement across ranks: turning one rank's failure into every rank's, and
// checking that every rank was started the same way. Both are collectives:
// every rank calls them at the same point.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "dist/communicator.h"

namespace mingpt {

// The message of the error AgreeOnStatus returns on ranks that did not fail
// themselves (or did, but a lower rank failed too): the failing rank reports.
inline constexpr char kPeerFailedMessage[] = "stopped because another rank failed";

// Every rank learns whether any rank failed. The lowest failing rank gets its
// own error back (prefixed with "rank r: " for r > 0); every other rank
// gets kPeerFailedMessage; the errors are Agreed(). All OK: OK everywhere.
// At one rank, `local` as it is.
Status AgreeOnStatus(Communicator* comm, const Status& local);

// True for the errors that some other rank has already reported.
inline bool IsPeerFailure(const Status& s) { return !s.ok() && s.message() == kPeerFailedMessage; }

// How a rank leaves the job once its part of a command has given `result`.
// An error this rank met alone (not Agreed()) in a world of several is
// printed here, naming the rank ("mingpt: error: rank R: ..."), and ends
// every rank (Communicator::Abort(1)): the others may be waiting for this
// one in a collective, and leaving cleanly (MPI_Finalize, which waits for
// every rank) would wait for ever. Otherwise every rank is at the same point:
// the communicator is closed and `result` returned.
Status LeaveJob(std::unique_ptr<Communicator> comm, Status result);

// Rank `root`'s *value on every rank.
void BroadcastString(Communicator* comm, std::string* value, int root = 0);

// Checks that `value` (a canonical description of the configuration) is the
// same on every rank as on rank 0. An Agreed() error on every rank otherwise,
// naming the ranks that differ.
Status CheckSameOnAllRanks(Communicator* comm, const std::string& what, const std::string& value);

}  // namespace mingpt
