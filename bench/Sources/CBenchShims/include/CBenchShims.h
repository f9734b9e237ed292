#ifndef CBENCHSHIMS_H
#define CBENCHSHIMS_H

#include <sys/socket.h>
#include <time.h>

/// Layout twin of glibc's `struct mmsghdr`, which Swift's Glibc module hides behind `_GNU_SOURCE`.
struct cbench_mmsghdr {
    /// The message header of one datagram.
    struct msghdr msg_hdr;
    /// Bytes transmitted or received for this datagram, filled in by the kernel.
    unsigned int msg_len;
};

/// Calls `sendmmsg(2)`; returns the datagrams sent, or -1 with `errno` set.
int cbench_sendmmsg(int fd, struct cbench_mmsghdr *vector, unsigned int count, int flags);

/// Calls `recvmmsg(2)`; returns the datagrams received, or -1 with `errno` set.
int cbench_recvmmsg(int fd, struct cbench_mmsghdr *vector, unsigned int count, int flags,
                    struct timespec *timeout);

/// Asks the kernel to stamp every datagram received on `fd` with its arrival time
/// (`SO_TIMESTAMPNS`, CLOCK_REALTIME); returns 0, or -1 with `errno` set.
int cbench_enable_arrival_timestamps(int fd);

/// The arrival time the kernel attached to a received message (`SCM_TIMESTAMPNS`), in
/// nanoseconds since the epoch, or 0 if the message carries none.
unsigned long long cbench_arrival_timestamp(const struct msghdr *header);

#endif
