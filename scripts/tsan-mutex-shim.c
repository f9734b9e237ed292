// Tells ThreadSanitizer about the contended path of Swift's Synchronization.Mutex on Linux.
//
// Built and preloaded (LD_PRELOAD) by scripts/sanitize.sh for the ThreadSanitizer run only.
// Mutex's uncontended lock and unlock are compare-exchanges inlined into the caller, which TSan
// instruments and sees as acquire and release. The contended path is _lockSlow/_unlockSlow in
// libswiftSynchronization.so, which is not instrumented and hands the lock over with a
// priority-inheritance futex (FUTEX_LOCK_PI, FUTEX_UNLOCK_PI): the kernel writes the new owner
// into the lock word, so TSan never sees the acquire, and reports every access under a lock
// that was taken after a wait as a race with the previous holder's (seen in BackendResolver and
// in Relay.startWorkers when two threads finish at once). These wrappers call the library's own
// functions (dlsym RTLD_NEXT) and add the acquire after a slow lock and the release before a
// slow unlock, on the lock word's address, the one the inlined compare-exchanges use. Nothing
// else changes: a real race, an access outside the lock, is still reported.
//
// Swift passes the borrowed _MutexHandle (the lock word's address) in the swift_context register, LLVM's swiftself
// (r13 on x86-64; disassembly of _lockSlow), hence swiftcall and swift_context (clang's name for it).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>

void __tsan_acquire(void *address) __attribute__((weak));
void __tsan_release(void *address) __attribute__((weak));

#define LOCK_SLOW "$s15Synchronization12_MutexHandleV9_lockSlowyys6UInt32VF"
#define TRY_LOCK_SLOW "$s15Synchronization12_MutexHandleV12_tryLockSlowSbyF"
#define UNLOCK_SLOW "$s15Synchronization12_MutexHandleV11_unlockSlowyyF"

typedef __attribute__((swiftcall)) void (*LockSlow)(uint32_t, void *__attribute__((swift_context)));
typedef __attribute__((swiftcall)) bool (*TryLockSlow)(void *__attribute__((swift_context)));
typedef __attribute__((swiftcall)) void (*UnlockSlow)(void *__attribute__((swift_context)));

__attribute__((swiftcall)) void lockSlow(uint32_t owner, void *__attribute__((swift_context)) word) __asm__(LOCK_SLOW);
__attribute__((swiftcall)) bool tryLockSlow(void *__attribute__((swift_context)) word) __asm__(TRY_LOCK_SLOW);
__attribute__((swiftcall)) void unlockSlow(void *__attribute__((swift_context)) word) __asm__(UNLOCK_SLOW);

__attribute__((swiftcall)) void lockSlow(uint32_t owner, void *__attribute__((swift_context)) word) {
    static LockSlow next;
    if (!next) next = (LockSlow)dlsym(RTLD_NEXT, LOCK_SLOW);
    next(owner, word);
    if (__tsan_acquire) __tsan_acquire(word);
}

__attribute__((swiftcall)) bool tryLockSlow(void *__attribute__((swift_context)) word) {
    static TryLockSlow next;
    if (!next) next = (TryLockSlow)dlsym(RTLD_NEXT, TRY_LOCK_SLOW);
    bool locked = next(word);
    if (locked && __tsan_acquire) __tsan_acquire(word);
    return locked;
}

__attribute__((swiftcall)) void unlockSlow(void *__attribute__((swift_context)) word) {
    static UnlockSlow next;
    if (!next) next = (UnlockSlow)dlsym(RTLD_NEXT, UNLOCK_SLOW);
    if (__tsan_release) __tsan_release(word);
    next(word);
}
