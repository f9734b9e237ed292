#define _GNU_SOURCE
#include <assert.h>
#include <stddef.h>
#include <sys/socket.h>

#include "CBenchShims.h"

static_assert(sizeof(struct cbench_mmsghdr) == sizeof(struct mmsghdr), "mmsghdr size");
static_assert(offsetof(struct cbench_mmsghdr, msg_len) == offsetof(struct mmsghdr, msg_len),
              "mmsghdr msg_len offset");

int cbench_sendmmsg(int fd, struct cbench_mmsghdr *vector, unsigned int count, int flags) {
    return sendmmsg(fd, (struct mmsghdr *)vector, count, flags);
}

int cbench_recvmmsg(int fd, struct cbench_mmsghdr *vector, unsigned int count, int flags,
                    struct timespec *timeout) {
    return recvmmsg(fd, (struct mmsghdr *)vector, count, flags, timeout);
}
