#ifndef CLIBURING_SHIM_H
#define CLIBURING_SHIM_H

// glibc headers first: liburing.h sets feature macros that otherwise leave
// Glibc's module without fd_set and friends on a clean build.
#include <sys/types.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/prctl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <errno.h>
#include <signal.h>
#include <sched.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <poll.h>

#include <liburing.h>

// Flags defined through enum-valued macros do not import into Swift.
static const unsigned char cl_IOSQE_BUFFER_SELECT = IOSQE_BUFFER_SELECT;
static const unsigned char cl_IOSQE_CQE_SKIP_SUCCESS = IOSQE_CQE_SKIP_SUCCESS;

// Newer than liburing 2.3's headers; the values are kernel ABI.
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif
static const unsigned cl_IORING_FEAT_MIN_TIMEOUT = IORING_FEAT_MIN_TIMEOUT;
static const unsigned cl_IORING_FEAT_EXT_ARG = IORING_FEAT_EXT_ARG;
static const unsigned cl_IORING_SETUP_SINGLE_ISSUER = IORING_SETUP_SINGLE_ISSUER;
static const unsigned cl_IORING_SETUP_DEFER_TASKRUN = IORING_SETUP_DEFER_TASKRUN;
static const unsigned cl_IORING_SETUP_COOP_TASKRUN = IORING_SETUP_COOP_TASKRUN;
static const unsigned cl_IORING_SETUP_CQSIZE = IORING_SETUP_CQSIZE;
static const unsigned cl_IORING_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
static const unsigned cl_IORING_CQE_F_MORE = IORING_CQE_F_MORE;
static const unsigned cl_IORING_CQE_F_BUFFER = IORING_CQE_F_BUFFER;
static const unsigned cl_IORING_CQE_BUFFER_SHIFT = IORING_CQE_BUFFER_SHIFT;
static const unsigned cl_IORING_CQE_F_NOTIF = IORING_CQE_F_NOTIF;

/// Size of the header the kernel writes before a multishot recvmsg payload.
static const unsigned cl_recvmsg_out_size = sizeof(struct io_uring_recvmsg_out);

// Which of the opcodes the uring driver uses the kernel lacks: 0 when it has them all, else
// the first missing opcode number; -errno when the kernel cannot be asked.
static inline int cl_first_missing_opcode(struct io_uring *ring) {
    struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
    if (!probe) return -ENOSYS;
    static const int needed[] = { IORING_OP_RECVMSG, IORING_OP_SEND, IORING_OP_POLL_ADD, IORING_OP_ASYNC_CANCEL };
    int missing = 0;
    for (unsigned i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
        if (!io_uring_opcode_supported(probe, needed[i])) { missing = needed[i]; break; }
    }
    io_uring_free_probe(probe);
    return missing;
}

// The portable driver's batch calls. Glibc's module hides `struct mmsghdr`, `recvmmsg` and
// `sendmmsg` behind _GNU_SOURCE; this twin has the kernel's layout and the calls go straight
// to the system calls. Both return the count, or -errno.
struct cl_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

static inline int cl_recvmmsg(int fd, struct cl_mmsghdr *vector, unsigned int count, int flags) {
    long ret = syscall(__NR_recvmmsg, fd, vector, count, flags, NULL);
    return ret < 0 ? -errno : (int)ret;
}

static inline int cl_sendmmsg(int fd, struct cl_mmsghdr *vector, unsigned int count, int flags) {
    long ret = syscall(__NR_sendmmsg, fd, vector, count, flags);
    return ret < 0 ? -errno : (int)ret;
}

// `ppoll(2)` with a nanosecond timeout (negative: none); returns the ready count, or -errno.
static inline int cl_ppoll(struct pollfd *fds, unsigned long count, long long timeout_ns) {
    struct timespec ts;
    struct timespec *bound = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        bound = &ts;
    }
    long ret = syscall(__NR_ppoll, fds, count, bound, NULL, 0);
    return ret < 0 ? -errno : (int)ret;
}

/// Publishes the SQEs prepared so far and enters the kernel once: submits them and waits
/// for `wait_nr` completions, for at most `timeout_ns` (negative: no limit). With
/// `min_wait_usec` (kernel 6.12+, IORING_FEAT_MIN_TIMEOUT; pass 0 elsewhere) it returns once
/// that has passed and at least one completion is ready; if none is, it waits on for one until
/// the timeout, or, with no timeout, returns -ETIME at once. Returns the number submitted or -errno.
/// liburing 2.3 cannot pass the minimum wait (it lives in io_uring_getevents_arg.pad, now
/// min_wait_usec), so this is io_uring_submit_and_wait_timeout with that one field set.
static inline int cl_submit_and_wait_min(struct io_uring *ring, unsigned wait_nr,
                                         long long timeout_ns, unsigned min_wait_usec) {
    struct io_uring_sq *sq = &ring->sq;
    unsigned tail = sq->sqe_tail;
    if (sq->sqe_head != tail) {
        sq->sqe_head = tail;
        io_uring_smp_store_release(sq->ktail, tail);
    }
    unsigned to_submit = tail - io_uring_smp_load_acquire(sq->khead);
    struct __kernel_timespec ts;
    struct io_uring_getevents_arg arg;
    memset(&arg, 0, sizeof(arg));
    arg.sigmask_sz = _NSIG / 8;
    arg.pad = min_wait_usec;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        arg.ts = (unsigned long long)(uintptr_t)&ts;
    }
    unsigned flags = IORING_ENTER_EXT_ARG;
    if (wait_nr > 0 || (ring->flags & IORING_SETUP_DEFER_TASKRUN)) {
        flags |= IORING_ENTER_GETEVENTS;
    }
    long ret = syscall(__NR_io_uring_enter, ring->ring_fd, to_submit, wait_nr, flags,
                       &arg, sizeof(arg));
    return ret < 0 ? -errno : (int)ret;
}

/// Copies the oldest CQE into `out` and releases its slot. Returns 1, or 0 when none is ready.
/// (liburing's peek helpers may enter the kernel; this never does.)
static inline int cl_next_cqe(struct io_uring *ring, struct io_uring_cqe *out) {
    unsigned head = *ring->cq.khead;
    unsigned tail = io_uring_smp_load_acquire(ring->cq.ktail);
    if (head == tail) return 0;
    *out = ring->cq.cqes[head & ring->cq.ring_mask];
    io_uring_smp_store_release(ring->cq.khead, head + 1);
    return 1;
}

/// Names the calling thread for `top -H` and `perf` (at most 15 bytes are kept).
static inline void cl_set_thread_name(const char *name) {
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

// The CPU_* macros and the affinity wrappers are GNU extensions that Glibc's module was
// built without; the system calls and the bit layout of cpu_set_t are stable kernel ABI.
#define CL_CPU_BITS (8 * sizeof(unsigned long))

/// Pins the calling thread to one CPU (`sched_setaffinity(2)`). Returns 0 or -errno.
static inline int cl_pin_current_thread(int cpu) {
    unsigned long mask[1024 / CL_CPU_BITS];
    if (cpu < 0 || cpu >= 1024) return -EINVAL;
    memset(mask, 0, sizeof(mask));
    mask[cpu / CL_CPU_BITS] |= 1UL << (cpu % CL_CPU_BITS);
    long rc = syscall(SYS_sched_setaffinity, 0, sizeof(mask), mask);
    return rc < 0 ? -errno : 0;
}

/// The CPUs this process may run on, as a bitmask of the first 64. Returns 0 on error.
static inline unsigned long long cl_allowed_cpus(void) {
    unsigned long mask[1024 / CL_CPU_BITS];
    memset(mask, 0, sizeof(mask));
    if (syscall(SYS_sched_getaffinity, 0, sizeof(mask), mask) < 0) return 0;
    return (unsigned long long)mask[0];
}

#endif
