// Status and StatusOr: expected failures (files, flags, checkpoints, user input)
// travel up as values and reach the user as one clear line. Broken invariants use
// MINGPT_CHECK (check.h) instead.
#pragma once

#include <exception>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace mingpt {

class Status {
 public:
  Status() = default;  // OK
  static Status Ok() { return Status(); }
  static Status Error(std::string message) { return Status(std::move(message)); }

  bool ok() const { return !message_.has_value(); }
  const std::string& message() const {
    static const std::string kOk = "OK";
    return message_ ? *message_ : kOk;
  }
  // Returns a new error whose message is "context: message".
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    Status s(context + ": " + *message_);
    s.agreed_ = agreed_;
    return s;
  }
  // An error that every process of a job returns at the same point
  // (dist/agree.h): each may then leave the job cleanly. One a process met
  // alone is not agreed: the others may be waiting for it in a collective.
  Status Agreed() const {
    Status s = *this;
    s.agreed_ = !ok();
    return s;
  }
  bool agreed() const { return agreed_; }

 private:
  explicit Status(std::string message) : message_(std::move(message)) {}
  std::optional<std::string> message_;
  bool agreed_ = false;
};

template <typename T>
class StatusOr {
 public:
  StatusOr(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  StatusOr(Status status) : v_(std::move(status)) {}  // NOLINT: must not be OK

  bool ok() const { return std::holds_alternative<T>(v_); }
  // A reference into this object (or to a static OK): safe to hold while it lives.
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

// body() (returning a Status or StatusOr), with an exception escaping it
// (std::bad_alloc on a huge request, a library's own) made the one-line
// error it is for the user: a bug or the machine's limit, not
// std::terminate's abort. Where the exception would end more than the
// request: a server's worker thread, or several ranks, which must leave the
// job through a Status (dist/agree.h, LeaveJob).
template <typename F>
auto CatchExceptions(F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return Status::Error("out of memory");
  } catch (const std::exception& e) {
    return Status::Error(std::string("internal error: ") + e.what());
  }
}

}  // namespace mingpt

#define MINGPT_CONCAT_INNER(a, b) a##b
#define MINGPT_CONCAT(a, b) MINGPT_CONCAT_INNER(a, b)

#define MINGPT_RETURN_IF_ERROR(expr)               \
  do {                                             \
    ::mingpt::Status mingpt_status_ = (expr);      \
    if (!mingpt_status_.ok()) return mingpt_status_; \
  } while (0)

#define MINGPT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

#define MINGPT_ASSIGN_OR_RETURN(lhs, expr) \
  MINGPT_ASSIGN_OR_RETURN_IMPL(MINGPT_CONCAT(statusor_, __LINE__), lhs, expr)
