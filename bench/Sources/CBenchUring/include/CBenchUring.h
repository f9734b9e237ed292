#ifndef CBENCHURING_H
#define CBENCHURING_H

/// A bare io_uring receive loop for `kernelbaseline --mode uring-recv`: one multishot
/// `IORING_OP_RECV` (`MSG_TRUNC`) on a provided-buffer ring, on a ring set up with
/// `SINGLE_ISSUER|DEFER_TASKRUN`, each wait asking for a batch of completions: what the relay's
/// io_uring driver does to receive, with nothing done to a datagram but counting it.
struct cbench_uring_receiver;

/// What one wait gathered.
struct cbench_uring_batch {
    /// Datagrams received (completions carrying a buffer, or an empty datagram).
    int datagrams;
    /// Their bytes (a truncated datagram's whole length, as `MSG_TRUNC` reports it).
    long long bytes;
    /// Datagrams longer than a buffer.
    int truncated;
    /// Times the multishot receive ended and was armed again.
    int rearms;
};

/// Opens a receiver on `fd` with `buffers` provided buffers of `buffer_size` bytes (`buffers`
/// a power of two, at most 32 768), or returns NULL with `*error` set to a positive errno.
struct cbench_uring_receiver *cbench_uring_open(int fd, unsigned buffers, unsigned buffer_size,
                                                unsigned queue_depth, int *error);

/// Waits for `wait_count` completions or `timeout_ns`, whichever comes first, then handles every
/// completion there is; returns 0 (`*batch` filled) or a negative errno.
int cbench_uring_receive(struct cbench_uring_receiver *receiver, unsigned wait_count,
                         long long timeout_ns, struct cbench_uring_batch *batch);

/// Closes the ring and frees the buffers (not the socket).
void cbench_uring_close(struct cbench_uring_receiver *receiver);

#endif
