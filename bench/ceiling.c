/* The C ceiling for closed-port probing: non-blocking connect() over epoll.
 *
 * usage: ceiling FIRST_IP COUNT PORT CONCURRENCY
 * Connects to COUNT consecutive addresses from FIRST_IP on PORT, CONCURRENCY at a time,
 * and prints one line: "<probes per second> <refused> <other>".
 * This is what brokerscan's engine is measured against (bench/closed_ports.py). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s FIRST_IP COUNT PORT CONCURRENCY\n", argv[0]);
        return 2;
    }
    struct in_addr first;
    if (inet_pton(AF_INET, argv[1], &first) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    long count = atol(argv[2]), started = 0, finished = 0, in_flight = 0;
    long refused = 0, other = 0;
    int port = atoi(argv[3]), concurrency = atoi(argv[4]);
    uint32_t base = ntohl(first.s_addr);
    int ep = epoll_create1(0);
    struct epoll_event events[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (finished < count) {
        while (in_flight < concurrency && started < count) {
            int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (s < 0) { perror("socket"); return 1; }
            struct sockaddr_in a = {0};
            a.sin_family = AF_INET;
            a.sin_port = htons((uint16_t)port);
            a.sin_addr.s_addr = htonl(base + (uint32_t)started);
            started++;
            if (connect(s, (struct sockaddr *)&a, sizeof a) < 0 && errno == EINPROGRESS) {
                struct epoll_event ev = {.events = EPOLLOUT, .data.fd = s};
                epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
                in_flight++;
            } else {
                if (errno == ECONNREFUSED) refused++; else other++;
                close(s);
                finished++;
            }
        }
        int n = epoll_wait(ep, events, 256, 1000);
        for (int k = 0; k < n; k++) {
            int s = events[k].data.fd, err = 0;
            socklen_t len = sizeof err;
            getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == ECONNREFUSED) refused++; else other++;
            epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL);
            close(s);
            in_flight--;
            finished++;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%.1f %ld %ld\n", (double)count / secs, refused, other);
    return 0;
}
