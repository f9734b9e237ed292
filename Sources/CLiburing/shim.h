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
#include <sys/signalfd.h>
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
#include <linux/errqueue.h>
#include <linux/sock_diag.h>
#include <sys/epoll.h>

#include <liburing.h>

// Flags defined through enum-valued macros do not import into Swift.
static const unsigned char cl_IOSQE_BUFFER_SELECT = IOSQE_BUFFER_SELECT;
static const unsigned char cl_IOSQE_IO_HARDLINK = IOSQE_IO_HARDLINK;

// Newer than liburing 2.3's headers; the values are kernel ABI.
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif
static const unsigned cl_IORING_FEAT_MIN_TIMEOUT = IORING_FEAT_MIN_TIMEOUT;
// Receive bundles (Linux 6.10), also newer than liburing 2.3; the values are kernel ABI, from
// include/uapi/linux/io_uring.h: IORING_RECVSEND_BUNDLE is a flag of the recv SQE's ioprio
// (beside IORING_RECV_MULTISHOT), IORING_FEAT_RECVSEND_BUNDLE a bit of io_uring_params.features.
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif
static const unsigned cl_IORING_FEAT_RECVSEND_BUNDLE = IORING_FEAT_RECVSEND_BUNDLE;

/* A multishot recv on a TCP ingest connection into buffer group `group` (no MSG_TRUNC: a
   stream has no datagram length to report), with IORING_RECVSEND_BUNDLE when `bundle`: one
   CQE then covers as many consecutive buffers of the group as the bytes waiting fill. */
static inline void cl_prep_stream_recv_multishot(struct io_uring_sqe *sqe, int fd, unsigned short group, int bundle) {
    io_uring_prep_recv_multishot(sqe, fd, (void *)0, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = group;
    if (bundle) sqe->ioprio |= IORING_RECVSEND_BUNDLE;
}

static const unsigned cl_IORING_SETUP_SINGLE_ISSUER = IORING_SETUP_SINGLE_ISSUER;
static const unsigned cl_IORING_SETUP_DEFER_TASKRUN = IORING_SETUP_DEFER_TASKRUN;
static const unsigned cl_IORING_SETUP_COOP_TASKRUN = IORING_SETUP_COOP_TASKRUN;
static const unsigned cl_IORING_SETUP_CQSIZE = IORING_SETUP_CQSIZE;
static const unsigned cl_IORING_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
static const unsigned cl_IORING_CQE_F_MORE = IORING_CQE_F_MORE;
static const unsigned cl_IORING_CQE_F_BUFFER = IORING_CQE_F_BUFFER;
static const unsigned cl_IORING_CQE_BUFFER_SHIFT = IORING_CQE_BUFFER_SHIFT;

// Which of the opcodes the uring driver uses the kernel lacks: 0 when it has them all, else
// the first missing opcode number; -errno when the kernel cannot be asked.
static inline int cl_first_missing_opcode(struct io_uring *ring) {
    struct io_uring_probe *probe = io_uring_get_probe_ring(ring);
    if (!probe) return -ENOSYS;
    static const int needed[] = { IORING_OP_RECV, IORING_OP_SEND, IORING_OP_POLL_ADD, IORING_OP_ASYNC_CANCEL };
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

/* epoll for the TCP ingest (`EventPoll`): `struct epoll_event` is packed on x86-64, so the
   shim reads and writes it and Swift sees only descriptors and 64-bit tokens. Each returns
   -errno on failure. */
static inline int cl_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static inline int cl_epoll_control(int epfd, int op, int fd, unsigned long long token) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = EPOLLIN | EPOLLRDHUP;
    event.data.u64 = token;
    return epoll_ctl(epfd, op, fd, &event) < 0 ? -errno : 0;
}

static inline int cl_epoll_add(int epfd, int fd, unsigned long long token) { return cl_epoll_control(epfd, EPOLL_CTL_ADD, fd, token); }
static inline int cl_epoll_modify(int epfd, int fd, unsigned long long token) { return cl_epoll_control(epfd, EPOLL_CTL_MOD, fd, token); }
static inline int cl_epoll_remove(int epfd, int fd) { return cl_epoll_control(epfd, EPOLL_CTL_DEL, fd, 0); }

/* accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC, through syscall(2): Glibc declares accept4 only
   under _GNU_SOURCE. Returns the new descriptor or -errno. */
static inline int cl_accept_nonblocking(int fd) {
    long result = syscall(SYS_accept4, fd, (void *)0, (void *)0, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return result < 0 ? -errno : (int)result;
}

/* A multishot accept (io_uring_prep_multishot_accept, Linux 5.19) whose connections come
   non-blocking and close-on-exec, as cl_accept_nonblocking's do. */
static inline void cl_prep_multishot_accept_nonblocking(struct io_uring_sqe *sqe, int fd) {
    io_uring_prep_multishot_accept(sqe, fd, (struct sockaddr *)0, (socklen_t *)0, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

/* Takes at most `count` (<= 256) ready descriptors without waiting; their tokens go to `tokens`. */
static inline int cl_epoll_ready(int epfd, unsigned long long *tokens, int count) {
    struct epoll_event events[256];
    if (count > 256) count = 256;
    int ready;
    do { ready = epoll_wait(epfd, events, count, 0); } while (ready < 0 && errno == EINTR);
    if (ready < 0) return -errno;
    for (int i = 0; i < ready; i++) tokens[i] = events[i].data.u64;
    return ready;
}

// Bytes charged to a socket's send buffer and not yet freed (`SIOCOUTQ`: for UDP the socket's
// write allocation, datagrams queued below it included); -errno on failure. ioctl is variadic.
static inline int cl_socket_send_queue_bytes(int fd) {
    int bytes = 0;
    return ioctl(fd, SIOCOUTQ, &bytes) < 0 ? -errno : bytes;
}

// Bytes received on a TCP socket and not yet read (`SIOCINQ`: a FIN received is not counted);
// -errno on failure (`EINVAL` on a listening socket). ioctl is variadic.
static inline int cl_socket_receive_queue_bytes(int fd) {
    int bytes = 0;
    return ioctl(fd, SIOCINQ, &bytes) < 0 ? -errno : bytes;
}

// `unshare(CLONE_NEWNET)` for the calling thread (Glibc's module hides `unshare`); 0 or -errno.
#ifndef CLONE_NEWNET
#define CLONE_NEWNET 0x40000000
#endif
static inline int cl_unshare_network(void) {
    long ret = syscall(__NR_unshare, CLONE_NEWNET);
    return ret < 0 ? -errno : 0;
}

// The calling thread's id (`gettid(2)`, hidden like `unshare`).
static inline int cl_gettid(void) { return (int)syscall(__NR_gettid); }

// `pipe2(fds, O_CLOEXEC)` (hidden like `unshare`); 0 or -errno.
static inline int cl_pipe_cloexec(int fds[2]) {
    long ret = syscall(__NR_pipe2, fds, 02000000 /* O_CLOEXEC */);
    return ret < 0 ? -errno : 0;
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

/// One CQE's three fields as `cl_take_completions` copies them, in the kernel's layout.
struct cl_completion {
    unsigned long long user_data;
    int res;
    unsigned flags;
};

/// The top byte of a CQE's user_data (the relay's `UserData.Kind`), read as one byte.
static inline __attribute__((always_inline)) unsigned cl_cqe_kind(const struct io_uring_cqe *cqe) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return ((const unsigned char *)&cqe->user_data)[7];
#else
    return (unsigned)(cqe->user_data >> 56);
#endif
}

/// What `cl_cqe_is_datagram` tests a CQE against: on little-endian targets the 8 bytes from
/// user_data's top byte on (that byte, res, and the flags' low 24 bits, which hold both flags)
/// masked with `mask` must equal `value`.
struct cl_datagram_test {
    unsigned long long mask;
    unsigned long long value;
    unsigned receive_kind;
};

/// The test for a datagram of a receive of kind `receive_kind` that stays armed.
static inline __attribute__((always_inline)) struct cl_datagram_test cl_datagram_test_for(unsigned receive_kind) {
    const unsigned long long wanted = IORING_CQE_F_MORE | IORING_CQE_F_BUFFER;
    _Static_assert((IORING_CQE_F_MORE | IORING_CQE_F_BUFFER) < (1u << 24), "both flags in the flags' low 24 bits");
    struct cl_datagram_test test = {0xffull | (0x80000000ull << 8) | (wanted << 40),
                                    (unsigned long long)(receive_kind & 0xff) | (wanted << 40), receive_kind};
    return test;
}

/// Whether `cqe` is a datagram of a receive that stays armed: user_data's top byte
/// `test.receive_kind`, IORING_CQE_F_MORE and IORING_CQE_F_BUFFER set, res >= 0; on
/// little-endian targets one masked compare of 8 bytes (`cl_datagram_test`).
static inline __attribute__((always_inline))
int cl_cqe_is_datagram(const struct io_uring_cqe *cqe, struct cl_datagram_test test) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    unsigned long long bytes;
    memcpy(&bytes, (const unsigned char *)cqe + 7, sizeof bytes);
    return (bytes & test.mask) == test.value;
#else
    const unsigned wanted = IORING_CQE_F_MORE | IORING_CQE_F_BUFFER;
    return cl_cqe_kind(cqe) == test.receive_kind && (cqe->flags & wanted) == wanted && cqe->res >= 0;
#endif
}

/// Takes the CQEs at positions [*next, end) of the completion queue, in order. A datagram of a
/// receive that stays armed (user_data's top byte `receive_kind`, IORING_CQE_F_MORE and
/// IORING_CQE_F_BUFFER set, res >= 0: `cl_cqe_is_datagram`) is parked in `queue` (mask + 1
/// slots) at position *tail, wrapped, while *tail < limit; *tail counts up. Every other CQE is
/// copied into `others`, at most `others_capacity` of them; after another CQE of
/// `receive_kind` (an end, an error, an empty datagram, a datagram with no room left) it stops,
/// so that the caller handles that one before any later datagram is parked. It also stops when
/// `others` is full. *next is advanced past every CQE taken; returns how many went to `others`.
///
/// Out of line, with registers of its own: inlined in the worker's wait, the loop's pointers
/// and masks were spilled and reloaded for every CQE. Walked by pointer in pieces that wrap
/// neither the CQ nor the queue and hold no more CQEs than there are slots left before the
/// queue wraps or the room ends; another CQE is copied without leaving the piece (a send's
/// completion comes every few datagrams).
static inline __attribute__((noinline))
unsigned cl_take_completions(const struct io_uring *ring, unsigned *next, unsigned end, unsigned receive_kind,
                             struct cl_completion *queue, unsigned long mask, unsigned long *tail,
                             unsigned long limit, struct cl_completion *others, unsigned others_capacity) {
    const struct io_uring_cqe *const cqes = ring->cq.cqes;
    const unsigned cq_mask = ring->cq.ring_mask;
    unsigned position = *next;
    unsigned taken = 0;
    // The queue's slots from `base` on are positions from `base_slot` on; `entry` is the next
    // one to fill, `entry_stop` where the queue wraps or the room ends, whichever is first.
    unsigned long base_slot = *tail;
    struct cl_completion *base = &queue[base_slot & mask];
    struct cl_completion *entry = base;
    const unsigned long room = limit - base_slot;
    const unsigned long queue_left = mask + 1 - (base_slot & mask);
    struct cl_completion *entry_stop = base + (room < queue_left ? room : queue_left);
    struct cl_datagram_test test = cl_datagram_test_for(receive_kind);
    // Kept in registers: rematerialised as immediates in the loop, they cost two instructions a CQE.
    __asm__("" : "+r"(test.mask), "+r"(test.value));
    while (position != end) {
        if (entry == entry_stop) {
            const unsigned long slot = base_slot + (unsigned long)(entry - base);
            if (slot != limit) {
                // The queue's last slot was filled: on from its first.
                base_slot = slot;
                base = entry = queue;
                entry_stop = queue + (limit - slot < mask + 1 ? limit - slot : mask + 1);
            } else {
                // No room left: this CQE, a datagram or not, is handed over as another.
                if (taken == others_capacity) break;
                const struct io_uring_cqe *cqe = &cqes[position & cq_mask];
                memcpy(&others[taken++], cqe, sizeof(struct cl_completion));
                position++;
                if (cl_cqe_kind(cqe) == receive_kind) break;
                continue;
            }
        }
        unsigned long piece = end - position;
        const unsigned long cq_left = cq_mask + 1 - (position & cq_mask);
        const unsigned long slots_left = (unsigned long)(entry_stop - entry);
        if (cq_left < piece) piece = cq_left;
        if (slots_left < piece) piece = slots_left;
        const struct io_uring_cqe *const first = &cqes[position & cq_mask];
        const struct io_uring_cqe *const piece_end = first + piece;
        const struct io_uring_cqe *cqe = first;
        for (; cqe != piece_end; cqe++) {
            if (__builtin_expect(cl_cqe_is_datagram(cqe, test), 1)) {
                memcpy(entry++, cqe, sizeof(struct cl_completion));
                continue;
            }
            if (taken == others_capacity) goto stop;
            memcpy(&others[taken++], cqe, sizeof(struct cl_completion));
            if (cl_cqe_kind(cqe) == receive_kind) {
                cqe++;
                goto stop;
            }
        }
        position += (unsigned)piece;
        continue;
    stop:
        position += (unsigned)(cqe - first);
        break;
    }
    *next = position;
    *tail = base_slot + (unsigned long)(entry - base);
    return taken;
}
_Static_assert(sizeof(struct cl_completion) == sizeof(struct io_uring_cqe), "a CQE is copied whole");

/// Writes the buffers of the datagrams parked at positions [start, end) of `queue` (mask + 1
/// slots, wrapped; `cl_take_completions`) into the provided-buffer ring `br` (ring_mask + 1
/// entries), in order, from `offset` entries past its tail on: each buffer `bid` at
/// `addresses[bid]` (its `storage + bid * stride`, computed once), `len` bytes. Nothing is published (`io_uring_buf_ring_advance`). The ring's
/// tail is read once: the kernel never writes it. Both sizes are powers of two.
///
/// Out of line, with registers of its own, like `cl_take_completions`: one call a turn.
static inline __attribute__((noinline))
void cl_recycle_parked(struct io_uring_buf_ring *br, const struct cl_completion *queue, unsigned long mask,
                       unsigned long start, unsigned long end, const unsigned long long *addresses, unsigned len, unsigned ring_mask, unsigned offset) {
    // Walked by pointer in pieces that wrap neither the queue nor the ring.
    unsigned ring_position = (unsigned)br->tail + offset;
    unsigned long position = start;
    while (position != end) {
        unsigned long piece = end - position;
        const unsigned long queue_left = mask + 1 - (position & mask);
        const unsigned long ring_left = ring_mask + 1 - (ring_position & ring_mask);
        if (queue_left < piece) piece = queue_left;
        if (ring_left < piece) piece = ring_left;
        const struct cl_completion *entry = &queue[position & mask];
        const struct cl_completion *const piece_end = entry + piece;
        struct io_uring_buf *buf = &br->bufs[ring_position & ring_mask];
        // Unrolled: the loop's own count, compare and branch were a quarter of its work.
#pragma clang loop unroll_count(4)
        for (; entry != piece_end; entry++, buf++) {
            const unsigned short bid = (unsigned short)(entry->flags >> IORING_CQE_BUFFER_SHIFT);
            // Masked: a buffer id the kernel never hands out (`withPayload` counts it malformed)
            // must not read past the table (`count` entries, `ring_mask + 1`).
            buf->addr = addresses[bid & ring_mask];
            buf->len = len;
            buf->bid = bid;
        }
        position += piece;
        ring_position += (unsigned)piece;
    }
}

/// The buffer id of the provided-buffer ring entry `offset` entries past the ring's tail: one
/// written (`io_uring_buf_ring_add`, `cl_recycle_parked`) and not yet published, so the kernel
/// neither reads nor writes it. `ProvidedBufferRing` reads back the ids it withholds from
/// circulation (`publish(circulating:)`), a few a turn, never per datagram. The tail is read
/// plainly: the kernel never writes it.
static inline unsigned short cl_buf_ring_bid(const struct io_uring_buf_ring *br, unsigned mask, unsigned offset) {
    return br->bufs[(br->tail + offset) & mask].bid;
}

/// Names the calling thread for `top -H` and `perf` (at most 15 bytes are kept).
static inline void cl_set_thread_name(const char *name) {
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

// The CPU_* macros and the affinity wrappers are GNU extensions that Glibc's module was
// built without; the system calls and the bit layout of cpu_set_t are stable kernel ABI.
#define CL_CPU_BITS (8 * sizeof(unsigned long))

/// `sched_setaffinity(2)` for the calling thread with a mask of `bytes` bytes.
/// Returns 0, or -1 with errno set (the system-call convention, for Swift's EINTR helper).
static inline long cl_sched_setaffinity(const unsigned long *mask, size_t bytes) {
    return syscall(SYS_sched_setaffinity, 0, bytes, mask);
}

/// `sched_getaffinity(2)` for the calling thread into a mask of `bytes` bytes (a multiple of
/// sizeof(unsigned long)). Returns the number of bytes the kernel wrote, or -1 with errno set
/// (EINVAL when the mask is smaller than the kernel's CPU count).
static inline long cl_sched_getaffinity(unsigned long *mask, size_t bytes) {
    return syscall(SYS_sched_getaffinity, 0, bytes, mask);
}

/// Bits in one word of a CPU mask (cpu_set_t's layout: CPU n is bit n % bits of word n / bits).
static const unsigned cl_cpu_mask_word_bits = CL_CPU_BITS;

// SO_REUSEPORT steering: a classic BPF program for the group (SO_ATTACH_REUSEPORT_CBPF,
// Linux 4.5+). The BPF_STMT macros do not import into Swift.
#include <linux/filter.h>

/// Attaches to the SO_REUSEPORT group of `fd` a program that gives each datagram to socket
/// `random % group_size` of the group (SKF_AD_RANDOM, a fresh pseudo-random number per packet),
/// so even one client's datagrams spread over every socket. An index the group does not have
/// (a socket closed) falls back to the kernel's hash of the 4-tuple.
/// Returns 0, or -1 with errno set.
static inline int cl_attach_reuseport_random(int fd, unsigned group_size) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (unsigned)(SKF_AD_OFF + SKF_AD_RANDOM)),
        BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, group_size),
        BPF_STMT(BPF_RET | BPF_A, 0),
    };
    struct sock_fprog program = { .len = 3, .filter = code };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &program, sizeof(program));
}

/// Detaches the program of `fd`'s SO_REUSEPORT group, if any: the kernel's hash of the 4-tuple
/// picks the socket again. Returns 0, or -1 with errno set (ENOENT: the group had none; EINVAL:
/// the socket is in no group).
static inline int cl_detach_reuseport(int fd) {
    int unused = 0;
    return setsockopt(fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &unused, sizeof(unused));
}

// Socket error queue (IP_RECVERR / IPV6_RECVERR). The CMSG_* macros do not import into Swift.

/// What the relay keeps of one error-queue entry (`struct sock_extended_err`, errqueue.h).
struct cl_socket_error {
    unsigned origin;  ///< SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6, SO_EE_ORIGIN_LOCAL, …; 0 if absent
    unsigned error;   ///< ee_errno: ECONNREFUSED for an ICMP port unreachable
    unsigned type;    ///< the ICMP type, for an ICMP origin
    unsigned code;    ///< the ICMP code, for an ICMP origin
    unsigned long quote_length;  ///< bytes of the offending datagram copied to `quote`
};

static const unsigned cl_SO_EE_ORIGIN_LOCAL = SO_EE_ORIGIN_LOCAL;
static const unsigned cl_SO_EE_ORIGIN_ICMP = SO_EE_ORIGIN_ICMP;
static const unsigned cl_SO_EE_ORIGIN_ICMP6 = SO_EE_ORIGIN_ICMP6;

/// Takes the oldest entry off `fd`'s error queue without waiting (`recvmsg(2)` with
/// MSG_ERRQUEUE | MSG_DONTWAIT), fills `out` from its IP_RECVERR/IPV6_RECVERR control message
/// and copies the entry's payload — the start of the offending datagram, as the ICMP error
/// quoted it — to `quote` (at most `quote_capacity` bytes).
/// Returns 0 when an entry was taken, or -1 with errno set (EAGAIN: the queue is empty).
static inline long cl_take_socket_error(int fd, struct cl_socket_error *out, void *quote, size_t quote_capacity) {
    union {
        char bytes[CMSG_SPACE(sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in6))];
        struct cmsghdr alignment;
    } control;
    struct msghdr message;
    struct iovec vector = { quote, quote_capacity };
    memset(&message, 0, sizeof(message));
    memset(out, 0, sizeof(*out));
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.bytes;
    message.msg_controllen = sizeof(control.bytes);
    ssize_t copied = recvmsg(fd, &message, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (copied < 0) return -1;
    out->quote_length = (unsigned long)copied;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c != NULL; c = CMSG_NXTHDR(&message, c)) {
        if ((c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) ||
            (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
            struct sock_extended_err error;
            memcpy(&error, CMSG_DATA(c), sizeof(error));
            out->origin = error.ee_origin;
            out->error = error.ee_errno;
            out->type = error.ee_type;
            out->code = error.ee_code;
        }
    }
    return 0;
}

// SO_MEMINFO (Linux 4.6+) fills SK_MEMINFO_VARS 32-bit words; the index names come from an
// anonymous enum in linux/sock_diag.h, re-exported here as typed constants.
static const int cl_SO_MEMINFO = SO_MEMINFO;
static const unsigned cl_SK_MEMINFO_VARS = SK_MEMINFO_VARS;
static const unsigned cl_SK_MEMINFO_DROPS = SK_MEMINFO_DROPS;

/// `a * b` as 128 bits, its two halves xored: the mixing step of the name hash below.
static inline __attribute__((always_inline))
unsigned long long cl_fold_multiply(unsigned long long a, unsigned long long b) {
    unsigned __int128 product = (unsigned __int128)a * b;
    return (unsigned long long)product ^ (unsigned long long)(product >> 64);
}

/// The name hash's two secrets (UringRelay/Routing/PrimaryCache.swift draws them per cache).
struct cl_name_hash_seeds {
    unsigned long long state;
    unsigned long long key;
};

/// One 16-byte block of the name hash, as two little-endian words: the state xored with the
/// first, multiplied by the second xored with the secret key, folded (`cl_fold_multiply`). A
/// block the name ends in is zero past the name's end.
static inline __attribute__((always_inline))
unsigned long long cl_name_hash_block(unsigned long long state, unsigned long long low, unsigned long long high,
                                      unsigned long long key) {
    return cl_fold_multiply(state ^ low, high ^ key);
}

/// Eight bytes read as a little-endian word.
static inline __attribute__((always_inline))
unsigned long long cl_load_le64(const unsigned char *bytes) {
    unsigned long long word;
    memcpy(&word, bytes, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap64(word);
#endif
    return word;
}

/// Four bytes read as a little-endian word.
static inline __attribute__((always_inline))
unsigned long long cl_load_le32(const unsigned char *bytes) {
    unsigned word;
    memcpy(&word, bytes, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap32(word);
#endif
    return word;
}

/// Up to eight bytes read as a little-endian word, zero past `count` (1...8), reading only
/// `bytes[0..<count)`: the first four and the four that end at `count` (shifted to drop the
/// overlap), or each of one to three bytes.
static inline __attribute__((always_inline))
unsigned long long cl_partial_word(const unsigned char *bytes, size_t count) {
    if (count >= 8) return cl_load_le64(bytes);
    if (count >= 4) return cl_load_le32(bytes) | ((cl_load_le32(bytes + count - 4) >> (8 * (8 - count))) << 32);
    return (unsigned long long)bytes[0] | ((unsigned long long)bytes[count >> 1] << (8 * (count >> 1)))
        | ((unsigned long long)bytes[count - 1] << (8 * (count - 1)));
}

/// A seeded 64-bit hash of `bytes[0..<length)`, sixteen bytes a step (the primary cache's key,
/// UringRelay/Routing/PrimaryCache.swift): the name read as 16-byte blocks from its first byte,
/// the last zero past the name's end, each mixed into the state with one 128-bit multiply by a
/// secret (`cl_name_hash_block`). Reads every byte of the name and none outside it. The length
/// is not mixed in: the zeros past the end give it for a name without NUL bytes, and no line
/// holding a NUL is forwarded, so none is hashed (UringRelay/Protocol/LineScanner.swift). The
/// line scan computes the same hash from the blocks it reads anyway (`cl_line_stop`); this is
/// the hash of a name the scan did not hash. Not a routing hash: it only finds a name's cached
/// backend.
static inline __attribute__((always_inline))
unsigned long long cl_name_hash(struct cl_name_hash_seeds seeds, const unsigned char *bytes, size_t length) {
    unsigned long long state = seeds.state;
    size_t offset = 0;
    for (; offset + 16 <= length; offset += 16) {
        state = cl_name_hash_block(state, cl_load_le64(bytes + offset), cl_load_le64(bytes + offset + 8), seeds.key);
    }
    size_t rest = length - offset;
    if (rest > 0) {
        unsigned long long low = cl_partial_word(bytes + offset, rest);
        unsigned long long high = rest > 8 ? cl_partial_word(bytes + offset + 8, rest - 8) : 0;
        state = cl_name_hash_block(state, low, high, seeds.key);
    }
    return state;
}

// ---- Line scanning (RelayKernel/RawSpan+Search.swift) ----
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/// Whether `cl_line_stop` can hash a name on the way (its 16-byte block path, SSE2); without,
/// it reads bytes one by one and leaves every name to `cl_name_hash`.
#if defined(__SSE2__)
static const int cl_line_stop_hashes_names = 1;
#else
static const int cl_line_stop_hashes_names = 0;
#endif

#if defined(__SSE2__)
/// Bytes 0..<16 set in the first 16, clear in the last: `cl_name_tail_masks + 16 - n` keeps a
/// block's first `n` bytes.
static const unsigned char cl_name_tail_masks[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};

/// Whether the 16-byte block `v` of `bytes` at `offset` holds a '\n', '\r' or NUL among the
/// bytes `keep` selects: 0 if not, else 2 when the first is a '\n' and 1 when it is a '\r' or
/// NUL, with `*stop` set to its offset. A block is first tested for any byte up to '\r' (one
/// compare: '\n', '\r' and NUL are the only such bytes in a common line); the first such byte,
/// read, is the stop when it is a '\n' (every stop is such a byte), and only otherwise (a '\r',
/// a NUL, or a tab, which stops nothing) is the block tested for the three exactly.
static inline __attribute__((always_inline))
int cl_block_stop(const unsigned char *bytes, __m128i v, unsigned keep, size_t offset, size_t *stop) {
    const __m128i carriage = _mm_set1_epi8('\r');
    unsigned controls = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(v, carriage), v)) & keep;
    if (controls == 0) return 0;
    size_t first = offset + (size_t)__builtin_ctz(controls);
    if (bytes[first] == '\n') {
        *stop = first;
        return 2;
    }
    __m128i stops = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\n')), _mm_cmpeq_epi8(v, carriage)),
                                 _mm_cmpeq_epi8(v, _mm_setzero_si128()));
    unsigned stop_bits = (unsigned)_mm_movemask_epi8(stops) & keep;
    if (stop_bits == 0) return 0;
    *stop = offset + (size_t)__builtin_ctz(stop_bits);
    return bytes[*stop] == '\n' ? 2 : 1;
}

/// The name hash's block `v` cut after its first `at` bytes (1...16), mixed into `hash`.
static inline __attribute__((always_inline))
unsigned long long cl_name_hash_cut_block(unsigned long long hash, __m128i v, size_t at, unsigned long long key) {
    __m128i name = _mm_and_si128(v, _mm_loadu_si128((const __m128i *)(cl_name_tail_masks + 16 - at)));
    return cl_name_hash_block(hash, (unsigned long long)_mm_cvtsi128_si64(name),
                              (unsigned long long)_mm_cvtsi128_si64(_mm_unpackhi_epi64(name, name)), key);
}
#endif

/// The first byte of `bytes[0..<length)` that is '\n', '\r' or NUL (where a common StatsD
/// line ends, or an uncommon one needs a closer look): its offset, or `length` when there is
/// none; `*colon` gets the offset of the first ':' before it, or `length` when there is none;
/// `*newline` is 1 when the stop is a '\n' or `length` (the common line's ending), 0 for a '\r'
/// or NUL (the byte read where the scan found it, so that the caller need not read it again).
///
/// One pass, 16 bytes at a time (SSE2), where four `memchr` calls a line were made before, in
/// two loops: until the block holding the first ':', each block is tested for a ':' (and mixed
/// into the name hash) and for a stop; after it, for a stop only. Never reads outside
/// `bytes[0..<length)`: the last partial block is read as the 16 bytes that end at `length`,
/// overlapping the block before, with the bytes already seen masked off.
///
/// With `hashing`, `*name_hash` gets `cl_name_hash(seeds, bytes, *colon)`, computed from the
/// blocks read anyway (the last, overlapping one shifted into place), and `*hashed` is 1; with
/// no ':' before the stop, or fewer than 16 bytes to read, `*hashed` is 0 and the caller hashes
/// the name itself. (Little-endian: the SSE2 path is x86-64's.)
static inline __attribute__((always_inline))
size_t cl_line_stop(const unsigned char *bytes, size_t length, size_t *colon, int *newline, int hashing,
                    struct cl_name_hash_seeds seeds, unsigned long long *name_hash, int *hashed) {
    size_t found_colon = length;
    size_t offset = 0;
    *hashed = 0;
#if defined(__SSE2__)
    if (length >= 16) {
        size_t stop = length;
        // 2: no stop before `length` or a '\n'; 1: a '\r' or NUL (`cl_block_stop`).
        int ending = 2;
        unsigned long long hash = seeds.state;
        // The last whole block's offset: a block at a greater one is read as the 16 bytes
        // that end at `length`.
        const size_t last = length - 16;
        __m128i v;
        // Until the block holding the first ':'.
        for (;; offset += 16) {
            if (offset > last) goto name_tail;
            v = _mm_loadu_si128((const __m128i *)(bytes + offset));
            unsigned colon_bits = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(':')));
            if (colon_bits) {
                unsigned at = (unsigned)__builtin_ctz(colon_bits);
                found_colon = offset + at;
                if (hashing && at > 0) hash = cl_name_hash_cut_block(hash, v, at, seeds.key);
                break;
            }
            if (hashing) {
                hash = cl_name_hash_block(hash, (unsigned long long)_mm_cvtsi128_si64(v),
                                          (unsigned long long)_mm_cvtsi128_si64(_mm_unpackhi_epi64(v, v)), seeds.key);
            }
            if ((ending = cl_block_stop(bytes, v, 0xffffu, offset, &stop))) goto found;
        }
        // The block holding the ':', then the rest of the line: its stop only.
        for (;;) {
            if ((ending = cl_block_stop(bytes, v, 0xffffu, offset, &stop))) goto found;
            offset += 16;
            if (offset > last) break;
            v = _mm_loadu_si128((const __m128i *)(bytes + offset));
        }
        if (offset < length) {
            // The last 16 bytes, overlapping what was seen.
            v = _mm_loadu_si128((const __m128i *)(bytes + last));
            ending = cl_block_stop(bytes, v, (0xffffu << (unsigned)(offset - last)) & 0xffffu, last, &stop);
        }
        goto found;
    name_tail:
        if (offset < length) {
            // The last 16 bytes, overlapping what was seen, before any ':'.
            unsigned keep = (0xffffu << (unsigned)(offset - last)) & 0xffffu;
            v = _mm_loadu_si128((const __m128i *)(bytes + last));
            unsigned colon_bits = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(':'))) & keep;
            if (colon_bits) {
                found_colon = last + (size_t)__builtin_ctz(colon_bits);
                if (hashing && found_colon > offset) {
                    // The name ends in this block: its last block, `bytes[offset..<found_colon)`, is
                    // these 16 bytes shifted down by `offset - last` and cut at the ':'.
                    // SSE2 shifts bytes only by constants: the shift is a store and a load.
                    unsigned char shifted[32] = {0};
                    memcpy(shifted, bytes + last, 16);
                    hash = cl_name_hash_cut_block(
                        hash, _mm_loadu_si128((const __m128i *)(shifted + (offset - last))), found_colon - offset,
                        seeds.key);
                }
            }
            ending = cl_block_stop(bytes, v, keep, last, &stop);
        }
    found:
        *newline = ending != 1;
        if (found_colon < stop) {
            *colon = found_colon;
            if (hashing) {
                *name_hash = hash;
                *hashed = 1;
            }
        } else {
            *colon = length;
        }
        return stop;
    }
#endif
    (void)seeds;
    (void)name_hash;
    for (; offset < length; offset++) {
        unsigned char byte = bytes[offset];
        if (byte == '\n' || byte == '\r' || byte == 0) break;
        if (byte == ':' && found_colon == length) found_colon = offset;
    }
    *colon = found_colon;
    *newline = offset == length || bytes[offset] == '\n';
    return offset;
}


/// One FNV-1a step: `hash = (hash ^ byte) * prime`. The xor changes only the low byte, so on
/// x86-64 it is one `xor` of the byte in memory into the hash register's low byte: two
/// instructions a byte with the `imul` (a zero-extending load, an `xor` and an `imul` as the
/// compiler writes it). Neither form is faster per byte in time (the `xor`+`imul` chain is the
/// latency either way); the instructions a line are what issue 16 counts.
#if defined(__x86_64__)
#define CL_FNV_STEP(hash, byte_pointer, prime) \
    do { \
        __asm__("xorb %1, %b0" : "+r"(hash) : "m"(*(byte_pointer))); \
        (hash) *= (prime); \
    } while (0)
#else
#define CL_FNV_STEP(hash, byte_pointer, prime) \
    do { (hash) = ((hash) ^ *(byte_pointer)) * (prime); } while (0)
#endif

/// FNV-1a 64 of `bytes[0..<length)` continuing from `hash` (the offset basis to start): eight
/// bytes a turn, then four, two and one as the length's low bits say. The multiply chain is
/// serial, so what the shape saves is loop control: a name of ~26 bytes takes three turns and
/// a two-byte step (RelayKernel/RawSpan+Search.swift).
static inline __attribute__((always_inline))
unsigned long long cl_fnv1a64(unsigned long long hash, const unsigned char *bytes, size_t length) {
    const unsigned long long prime = 0x100000001b3ULL;
    const unsigned char *end = bytes + (length & ~(size_t)7);
    for (; bytes != end; bytes += 8) {
        CL_FNV_STEP(hash, bytes + 0, prime);
        CL_FNV_STEP(hash, bytes + 1, prime);
        CL_FNV_STEP(hash, bytes + 2, prime);
        CL_FNV_STEP(hash, bytes + 3, prime);
        CL_FNV_STEP(hash, bytes + 4, prime);
        CL_FNV_STEP(hash, bytes + 5, prime);
        CL_FNV_STEP(hash, bytes + 6, prime);
        CL_FNV_STEP(hash, bytes + 7, prime);
    }
    if (length & 4) {
        CL_FNV_STEP(hash, bytes + 0, prime);
        CL_FNV_STEP(hash, bytes + 1, prime);
        CL_FNV_STEP(hash, bytes + 2, prime);
        CL_FNV_STEP(hash, bytes + 3, prime);
        bytes += 4;
    }
    if (length & 2) {
        CL_FNV_STEP(hash, bytes + 0, prime);
        CL_FNV_STEP(hash, bytes + 1, prime);
        bytes += 2;
    }
    if (length & 1) CL_FNV_STEP(hash, bytes, prime);
    return hash;
}

/// Copies `length` bytes from `source` to `destination` (not overlapping): a line into its
/// packet (RelayKernel/SendBufferPool.swift). Lines are short (a StatsD line ~40 bytes), and a
/// `memcpy` call in the middle of the worker's loop cost its call and the spills around it; up
/// to 64 bytes this is two to four loads and stores, each pair overlapping in the middle, never
/// reading or writing outside the `length` bytes. Longer lines go to `memcpy`.
static inline __attribute__((always_inline))
void cl_copy_line(unsigned char *destination, const unsigned char *source, size_t length) {
#if defined(__SSE2__)
    if (length > 64) {
        memcpy(destination, source, length);
    } else if (length > 32) {
        __m128i a = _mm_loadu_si128((const __m128i *)source);
        __m128i b = _mm_loadu_si128((const __m128i *)(source + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(source + length - 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(source + length - 16));
        _mm_storeu_si128((__m128i *)destination, a);
        _mm_storeu_si128((__m128i *)(destination + 16), b);
        _mm_storeu_si128((__m128i *)(destination + length - 32), c);
        _mm_storeu_si128((__m128i *)(destination + length - 16), d);
    } else if (length > 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)source);
        __m128i b = _mm_loadu_si128((const __m128i *)(source + length - 16));
        _mm_storeu_si128((__m128i *)destination, a);
        _mm_storeu_si128((__m128i *)(destination + length - 16), b);
    } else if (length >= 8) {
        unsigned long long a, b;
        memcpy(&a, source, 8);
        memcpy(&b, source + length - 8, 8);
        memcpy(destination, &a, 8);
        memcpy(destination + length - 8, &b, 8);
    } else if (length >= 4) {
        unsigned a, b;
        memcpy(&a, source, 4);
        memcpy(&b, source + length - 4, 4);
        memcpy(destination, &a, 4);
        memcpy(destination + length - 4, &b, 4);
    } else if (length > 0) {
        destination[0] = source[0];
        destination[length / 2] = source[length / 2];
        destination[length - 1] = source[length - 1];
    }
#else
    memcpy(destination, source, length);
#endif
}

/// One 8-byte word of the packet fingerprint's hash, read little-endian.
static inline __attribute__((always_inline))
unsigned long long cl_fingerprint_word(const unsigned char *bytes) {
    return cl_load_le64(bytes);
}

/// The packet fingerprint's hash before its finaliser (RelayKernel/PacketFingerprint.swift):
/// the `length` bytes at `bytes` as 8-byte little-endian words, the last zero-padded, folded
/// into two CRC-32C lanes, the even-indexed words into lane A and the odd ones into lane B, each
/// word one `crc32q` step (`crc = crc32c(crc, word)`, no inversions, as SSE4.2's instruction and
/// ARMv8's `crc32cx` define it); A starts at `seed`'s low 32 bits, B at its high 32. Returns
/// `B << 32 | A`. Runs for every packet sent over up to 64 words: with the instruction each word
/// is one `crc32q` from memory (~1.1 instructions a word with the loop's, against ~4.25 for the
/// multiply-rotate step it replaced), in two independent chains.
///
/// The instruction is used where the CPU has it (checked once, `cpuid`). A CPU without it
/// (x86-64 before SSE4.2, ARM built without the CRC extension) hashes with the multiply-rotate
/// mix instead (`cl_fingerprint_mixed`): a fingerprint never leaves its process, where quotes
/// and packets are hashed by the same function, so only the choice within a process matters,
/// and a CRC computed without the instruction (`cl_fingerprint_lanes_reference`) would cost
/// ~300 instructions a word.
static inline __attribute__((always_inline))
unsigned cl_crc32c_word_reference(unsigned crc, unsigned long long word) {
    for (int bit = 0; bit < 64; bit++) {
        unsigned low = (crc ^ (unsigned)(word >> bit)) & 1u;
        crc = (crc >> 1) ^ (0x82F63B78u & (0u - low));
    }
    return crc;
}

/// The last `length % 8` bytes of `length` at `bytes`, zero-padded, little-endian (0 if none).
static inline __attribute__((always_inline))
unsigned long long cl_fingerprint_tail(const unsigned char *bytes, size_t length) {
    size_t start = length & ~(size_t)7;
    unsigned long long tail = 0;
    for (size_t index = start; index < length; index++) tail |= (unsigned long long)bytes[index] << (8 * (index - start));
    return tail;
}

/// `cl_fingerprint_lanes` a bit at a time: the definition the instruction paths must agree
/// with (the tests compare them), not used by the relay.
static inline
unsigned long long cl_fingerprint_lanes_reference(unsigned long long seed, const unsigned char *bytes, size_t length) {
    unsigned lanes[2] = {(unsigned)seed, (unsigned)(seed >> 32)};
    size_t words = length / 8;
    for (size_t word = 0; word < words; word++) {
        lanes[word & 1] = cl_crc32c_word_reference(lanes[word & 1], cl_fingerprint_word(bytes + 8 * word));
    }
    if (length & 7) lanes[words & 1] = cl_crc32c_word_reference(lanes[words & 1], cl_fingerprint_tail(bytes, length));
    return ((unsigned long long)lanes[1] << 32) | lanes[0];
}

#if defined(__x86_64__)
#include <cpuid.h>

/// `cl_fingerprint_lanes` with SSE4.2's `crc32q`: eight words a turn (four a lane), then pairs.
__attribute__((target("sse4.2"), noinline))
static unsigned long long cl_fingerprint_lanes_sse42(unsigned long long seed, const unsigned char *bytes, size_t length) {
    unsigned long long a = (unsigned)seed, b = seed >> 32;
    if (length == 512) {
        // A packet of 512 bytes or more, the common case: 64 `crc32q`s, no loop.
#pragma clang loop unroll(full)
        for (int word = 0; word < 64; word += 2) {
            a = __builtin_ia32_crc32di(a, cl_fingerprint_word(bytes + 8 * word));
            b = __builtin_ia32_crc32di(b, cl_fingerprint_word(bytes + 8 * word + 8));
        }
        return (b << 32) | a;
    }
    size_t words = length / 8;
    const unsigned char *at = bytes;
    const unsigned char *end = bytes + 8 * (words & ~(size_t)7);
    for (; at != end; at += 64) {
        a = __builtin_ia32_crc32di(a, cl_fingerprint_word(at));
        b = __builtin_ia32_crc32di(b, cl_fingerprint_word(at + 8));
        a = __builtin_ia32_crc32di(a, cl_fingerprint_word(at + 16));
        b = __builtin_ia32_crc32di(b, cl_fingerprint_word(at + 24));
        a = __builtin_ia32_crc32di(a, cl_fingerprint_word(at + 32));
        b = __builtin_ia32_crc32di(b, cl_fingerprint_word(at + 40));
        a = __builtin_ia32_crc32di(a, cl_fingerprint_word(at + 48));
        b = __builtin_ia32_crc32di(b, cl_fingerprint_word(at + 56));
    }
    end = bytes + 8 * (words & ~(size_t)1);
    for (; at != end; at += 16) {
        a = __builtin_ia32_crc32di(a, cl_fingerprint_word(at));
        b = __builtin_ia32_crc32di(b, cl_fingerprint_word(at + 8));
    }
    // At most one whole word and a tail are left: lane A takes the next, lane B the one after.
    if (words & 1) {
        a = __builtin_ia32_crc32di(a, cl_fingerprint_word(at));
        if (length & 7) b = __builtin_ia32_crc32di(b, cl_fingerprint_tail(bytes, length));
    } else if (length & 7) {
        a = __builtin_ia32_crc32di(a, cl_fingerprint_tail(bytes, length));
    }
    return (b << 32) | a;
}

/// Whether the CPU has SSE4.2's `crc32` (asked once; a relaxed load after that: a plain `mov`).
static inline __attribute__((always_inline))
int cl_has_crc32c_instruction(void) {
    static int known; // 0: not asked yet, 1: no, 2: yes
    int answer = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (__builtin_expect(answer == 0, 0)) {
        unsigned eax, ebx, ecx, edx;
        answer = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_SSE4_2) ? 2 : 1;
        __atomic_store_n(&known, answer, __ATOMIC_RELAXED);
    }
    return answer == 2;
}
#elif defined(__ARM_FEATURE_CRC32)
#include <arm_acle.h>
static inline __attribute__((always_inline))
int cl_has_crc32c_instruction(void) { return 1; }
#else
static inline __attribute__((always_inline))
int cl_has_crc32c_instruction(void) { return 0; }
#endif

/// The packet fingerprint's hash of `length` bytes at `bytes` from `seed` for a CPU without a
/// CRC-32C instruction: the 8-byte words mixed by `state = rotl((state ^ word) * K, 29)`, four a
/// turn, the tail zero-padded into one last word (an `xor`, an `imul` and a `rol` a word).
static inline
unsigned long long cl_fingerprint_mixed(unsigned long long seed, const unsigned char *bytes, size_t length) {
    const unsigned long long multiplier = 0x9E3779B97F4A7C15ULL;
    unsigned long long state = seed;
    size_t words = length / 8, word = 0;
    for (; word + 4 <= words; word += 4) {
        const unsigned char *at = bytes + 8 * word;
        state = __builtin_rotateleft64((state ^ cl_fingerprint_word(at)) * multiplier, 29);
        state = __builtin_rotateleft64((state ^ cl_fingerprint_word(at + 8)) * multiplier, 29);
        state = __builtin_rotateleft64((state ^ cl_fingerprint_word(at + 16)) * multiplier, 29);
        state = __builtin_rotateleft64((state ^ cl_fingerprint_word(at + 24)) * multiplier, 29);
    }
    for (; word < words; word++) {
        state = __builtin_rotateleft64((state ^ cl_fingerprint_word(bytes + 8 * word)) * multiplier, 29);
    }
    if (length & 7) state = __builtin_rotateleft64((state ^ cl_fingerprint_tail(bytes, length)) * multiplier, 29);
    return state;
}

/// The packet fingerprint's hash before its finaliser: the two CRC-32C lanes
/// (`cl_fingerprint_lanes_reference` defines them) by the CPU's instruction where it has one,
/// else `cl_fingerprint_mixed`.
static inline __attribute__((always_inline))
unsigned long long cl_fingerprint_lanes(unsigned long long seed, const unsigned char *bytes, size_t length) {
#if defined(__x86_64__)
    if (__builtin_expect(cl_has_crc32c_instruction(), 1)) return cl_fingerprint_lanes_sse42(seed, bytes, length);
#elif defined(__ARM_FEATURE_CRC32)
    {
        unsigned a = (unsigned)seed, b = (unsigned)(seed >> 32);
        size_t words = length / 8, word = 0;
        for (; word + 2 <= words; word += 2) {
            a = __crc32cd(a, cl_fingerprint_word(bytes + 8 * word));
            b = __crc32cd(b, cl_fingerprint_word(bytes + 8 * word + 8));
        }
        if (words & 1) {
            a = __crc32cd(a, cl_fingerprint_word(bytes + 8 * word));
            if (length & 7) b = __crc32cd(b, cl_fingerprint_tail(bytes, length));
        } else if (length & 7) {
            a = __crc32cd(a, cl_fingerprint_tail(bytes, length));
        }
        return ((unsigned long long)b << 32) | a;
    }
#endif
    return cl_fingerprint_mixed(seed, bytes, length);
}

/// Whether `cl_fingerprint_lanes` runs on the CPU's CRC-32C instruction, else on
/// `cl_fingerprint_mixed` (for the tests: which definition this process's fingerprints follow).
static inline
int cl_fingerprint_uses_instruction(void) {
#if defined(__x86_64__) || defined(__ARM_FEATURE_CRC32)
    return cl_has_crc32c_instruction();
#else
    return 0;
#endif
}

#endif
