#include "dist/agree.h"

#include <cstdint>
#include <cstdio>
#include <vector>

namespace mingpt {

Status AgreeOnStatus(Communicator* comm, const Status& local) {
  if (comm->world() == 1) return local;
  std::vector<double> failed(comm->world(), 0.0);
  failed[comm->rank()] = local.ok() ? 0.0 : 1.0;
  comm->AllReduce(failed.data(), comm->world()).Wait();
  for (int r = 0; r < comm->world(); ++r) {
    if (failed[r] == 0) continue;
    if (r == comm->rank()) {
      return (r == 0 ? local : Status::Error("rank " + std::to_string(r) + ": " + local.message()))
          .Agreed();
    }
    return Status::Error(kPeerFailedMessage).Agreed();
  }
  return Status::Ok();
}

Status LeaveJob(std::unique_ptr<Communicator> comm, Status result) {
  if (!result.ok() && !result.agreed() && comm->world() > 1) {
    std::fprintf(stderr, "mingpt: error: rank %d: %s\n", comm->rank(), result.message().c_str());
    std::fflush(stderr);
    comm->Abort(1);
  }
  comm.reset();
  return result;
}

void BroadcastString(Communicator* comm, std::string* value, int root) {
  if (comm->world() == 1) return;
  uint64_t size = value->size();
  comm->Broadcast(&size, sizeof(size), root).Wait();
  value->resize(size);
  comm->Broadcast(value->data(), size, root).Wait();
}

Status CheckSameOnAllRanks(Communicator* comm, const std::string& what, const std::string& value) {
  if (comm->world() == 1) return Status::Ok();
  std::string root = value;
  BroadcastString(comm, &root, 0);
  std::vector<double> differs(comm->world(), 0.0);
  differs[comm->rank()] = root == value ? 0.0 : 1.0;
  comm->AllReduce(differs.data(), comm->world()).Wait();
  std::string ranks;
  for (int r = 0; r < comm->world(); ++r) {
    if (differs[r] != 0) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  }
  if (ranks.empty()) return Status::Ok();
  return Status::Error("the ranks were not given the same " + what + ": rank(s) " + ranks +
                       " differ from rank 0")
      .Agreed();
}

}  // namespace mingpt
