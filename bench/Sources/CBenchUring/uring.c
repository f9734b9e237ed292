#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <liburing.h>

#include "CBenchUring.h"

struct cbench_uring_receiver {
    struct io_uring ring;
    struct io_uring_buf_ring *buffer_ring;
    unsigned char *memory;
    unsigned buffers;
    unsigned buffer_size;
    int fd;
    int armed;
};

enum { group = 0 };

struct cbench_uring_receiver *cbench_uring_open(int fd, unsigned buffers, unsigned buffer_size,
                                                unsigned queue_depth, int *error) {
    if (buffers == 0 || buffers > 32768 || (buffers & (buffers - 1)) != 0 || buffer_size == 0) {
        *error = EINVAL;
        return NULL;
    }
    struct cbench_uring_receiver *receiver = calloc(1, sizeof *receiver);
    if (receiver == NULL) {
        *error = ENOMEM;
        return NULL;
    }
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL
        | IORING_SETUP_CQSIZE;
    params.cq_entries = buffers * 2;
    int result = io_uring_queue_init_params(queue_depth, &receiver->ring, &params);
    if (result < 0) {
        free(receiver);
        *error = -result;
        return NULL;
    }
    // liburing 2.3 has no io_uring_setup_buf_ring: the ring's memory is mapped and registered here.
    size_t ring_bytes = (size_t)buffers * sizeof(struct io_uring_buf);
    void *ring_memory = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (ring_memory == MAP_FAILED) {
        io_uring_queue_exit(&receiver->ring);
        free(receiver);
        *error = ENOMEM;
        return NULL;
    }
    struct io_uring_buf_reg registration;
    memset(&registration, 0, sizeof registration);
    registration.ring_addr = (unsigned long)ring_memory;
    registration.ring_entries = buffers;
    registration.bgid = group;
    result = io_uring_register_buf_ring(&receiver->ring, &registration, 0);
    if (result < 0) {
        munmap(ring_memory, ring_bytes);
        io_uring_queue_exit(&receiver->ring);
        free(receiver);
        *error = -result;
        return NULL;
    }
    receiver->buffer_ring = ring_memory;
    io_uring_buf_ring_init(receiver->buffer_ring);
    receiver->memory = malloc((size_t)buffers * buffer_size);
    if (receiver->memory == NULL) {
        io_uring_queue_exit(&receiver->ring);
        munmap(receiver->buffer_ring, ring_bytes);
        free(receiver);
        *error = ENOMEM;
        return NULL;
    }
    for (unsigned index = 0; index < buffers; index++) {
        io_uring_buf_ring_add(receiver->buffer_ring, receiver->memory + (size_t)index * buffer_size, buffer_size,
                              (unsigned short)index, io_uring_buf_ring_mask(buffers), (int)index);
    }
    io_uring_buf_ring_advance(receiver->buffer_ring, (int)buffers);
    receiver->buffers = buffers;
    receiver->buffer_size = buffer_size;
    receiver->fd = fd;
    return receiver;
}

int cbench_uring_receive(struct cbench_uring_receiver *receiver, unsigned wait_count, long long timeout_ns,
                         struct cbench_uring_batch *batch) {
    memset(batch, 0, sizeof *batch);
    if (!receiver->armed) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&receiver->ring);
        if (sqe == NULL) return -EBUSY;
        io_uring_prep_recv_multishot(sqe, receiver->fd, NULL, 0, MSG_TRUNC);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = group;
        receiver->armed = 1;
    }
    struct __kernel_timespec timeout = {.tv_sec = timeout_ns / 1000000000LL, .tv_nsec = timeout_ns % 1000000000LL};
    struct io_uring_cqe *cqe = NULL;
    int result = io_uring_submit_and_wait_timeout(&receiver->ring, &cqe, wait_count, &timeout, NULL);
    if (result < 0 && result != -ETIME && result != -EINTR) return result;
    unsigned head, seen = 0, returned = 0;
    io_uring_for_each_cqe(&receiver->ring, head, cqe) {
        seen++;
        if (cqe->res >= 0) {
            batch->datagrams++;
            batch->bytes += cqe->res;
            if ((unsigned)cqe->res > receiver->buffer_size) batch->truncated++;
            if (cqe->flags & IORING_CQE_F_BUFFER) {
                unsigned id = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
                io_uring_buf_ring_add(receiver->buffer_ring, receiver->memory + (size_t)id * receiver->buffer_size,
                                      receiver->buffer_size, (unsigned short)id,
                                      io_uring_buf_ring_mask(receiver->buffers), (int)returned);
                returned++;
            }
        } else if (cqe->res != -ENOBUFS) {
            io_uring_cq_advance(&receiver->ring, seen);
            if (returned) io_uring_buf_ring_advance(receiver->buffer_ring, (int)returned);
            return cqe->res;
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) {
            receiver->armed = 0;
            batch->rearms++;
        }
    }
    io_uring_cq_advance(&receiver->ring, seen);
    if (returned) io_uring_buf_ring_advance(receiver->buffer_ring, (int)returned);
    return 0;
}

void cbench_uring_close(struct cbench_uring_receiver *receiver) {
    if (receiver == NULL) return;
    io_uring_queue_exit(&receiver->ring);
    munmap(receiver->buffer_ring, (size_t)receiver->buffers * sizeof(struct io_uring_buf));
    free(receiver->memory);
    free(receiver);
}
