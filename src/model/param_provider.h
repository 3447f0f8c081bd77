// ParamProvider: how the model reaches its parameters and hands back
// gradients, unit by unit. The model never owns parameters; a strategy
// (engine/) implements this interface. Call order during one training
// micro-step:
//   forward:  Acquire(0) .. Release(0), Acquire(1) .. Release(1), ...
//   backward: Acquire(last) .. Grads(last) .. Release(last), GradsReady(last), ...
//             (the stem's backward needs no parameters: Grads(0), GradsReady(0))
// Grads(u) returns the unit's gradient buffer, which the model adds into
// (+=); GradsReady(u) says the unit's backward for this micro-step is done.
#pragma once

namespace mingpt {

class ParamProvider {
 public:
  virtual ~ParamProvider() = default;
  virtual const float* Acquire(int unit) = 0;
  virtual void Release(int unit) = 0;
  virtual float* Grads(int unit) = 0;
  virtual void GradsReady(int unit) = 0;
};

}  // namespace mingpt
