#define _GNU_SOURCE
#include <assert.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
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

int cbench_enable_arrival_timestamps(int fd) {
    int on = 1;
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on));
}

unsigned long long cbench_arrival_timestamp(const struct msghdr *header) {
    for (struct cmsghdr *message = CMSG_FIRSTHDR((struct msghdr *)header); message != NULL;
         message = CMSG_NXTHDR((struct msghdr *)header, message)) {
        if (message->cmsg_level == SOL_SOCKET && message->cmsg_type == SCM_TIMESTAMPNS
            && message->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec stamp;
            memcpy(&stamp, CMSG_DATA(message), sizeof(stamp));
            return (unsigned long long)stamp.tv_sec * 1000000000ULL + (unsigned long long)stamp.tv_nsec;
        }
    }
    return 0;
}
