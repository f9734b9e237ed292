/* A minimal StatsD sender for bench/ingest.sh: COUNT one-line datagrams "ingest.N:1|c"
 * (N = 0..999 in turn) as fast as the socket takes them, from one socket, then prints the
 * seconds it took.
 *
 *   ingest-sender unix PATH COUNT       a connected Unix datagram socket: send(2) blocks while
 *                                        the relay's queue is full, so nothing is lost
 *   ingest-sender udp HOST PORT COUNT   UDP to HOST:PORT (the kernel drops what the relay's
 *                                        receive buffer cannot hold: see the relay's counters)
 *   ingest-sender tcp HOST PORT COUNT   one TCP connection to HOST:PORT, the lines newline-ended
 *                                        and written 64 KiB at a time (as TCP clients batch);
 *                                        write(2) waits while the relay is behind, so nothing is
 *                                        lost; the connection is closed at the end
 *
 * Build: cc -O2 -o ingest-sender bench/ingest-sender.c
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int fd;
    long count;
    if (argc == 4 && strcmp(argv[1], "unix") == 0) {
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        strncpy(address.sun_path, argv[2], sizeof address.sun_path - 1);
        fd = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) { perror("connect unix"); return 71; }
        count = atol(argv[3]);
    } else if (argc == 5 && strcmp(argv[1], "udp") == 0) {
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[3]))};
        inet_pton(AF_INET, argv[2], &address.sin_addr);
        fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) { perror("connect udp"); return 71; }
        count = atol(argv[4]);
    } else if (argc == 5 && strcmp(argv[1], "tcp") == 0) {
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[3]))};
        inet_pton(AF_INET, argv[2], &address.sin_addr);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) { perror("connect tcp"); return 71; }
        count = atol(argv[4]);
        static char buffer[65536];
        size_t used = 0;
        double start = now();
        for (long i = 0; i < count; i++) {
            used += (size_t)snprintf(buffer + used, sizeof buffer - used, "ingest.%ld:1|c\n", i % 1000);
            if (used > sizeof buffer - 64 || i == count - 1) {
                size_t sent = 0;
                while (sent < used) {
                    ssize_t n = send(fd, buffer + sent, used - sent, 0);
                    if (n < 0) { perror("send"); return 74; }
                    sent += (size_t)n;
                }
                used = 0;
            }
        }
        printf("%.6f\n", now() - start);
        close(fd);
        return 0;
    } else {
        fprintf(stderr, "usage: ingest-sender unix PATH COUNT | udp HOST PORT COUNT | tcp HOST PORT COUNT\n");
        return 64;
    }
    char line[64];
    double start = now();
    for (long i = 0; i < count; i++) {
        int length = snprintf(line, sizeof line, "ingest.%ld:1|c", i % 1000);
        if (send(fd, line, (size_t)length, 0) < 0) { perror("send"); return 74; }
    }
    printf("%.6f\n", now() - start);
    return 0;
}
