/* loadgen: a small epoll load generator for scripts/bench (compiled there with cc -O2).
 *
 *   loadgen connect PROXY_PORT TARGET_PORT CLIENTS SECONDS [CYCLES]
 *                                                            new CONNECT tunnel + one GET per cycle
 *   loadgen direct  TARGET_PORT CLIENTS SECONDS [CYCLES]     new TCP connection + one GET per cycle
 *   loadgen serve   PORT                                     bulk source/sink: first byte 'D' = send
 *                                                            until the peer closes, 'U' = read until EOF
 *   loadgen bulk    PROXY_PORT TARGET_PORT down|up STREAMS SECONDS
 *                                                            MB/s through CONNECT tunnels (PROXY_PORT 0:
 *                                                            straight to the target); prints "bytes N
 *                                                            seconds S mbps R"
 *
 * Loopback only (127.0.0.1). Each client loops: connect, [CONNECT and read the 200],
 * send "GET /small", read the response head and its Content-Length body, close.
 * With CYCLES, clients start no new cycle once that many have been started, and the run
 * ends when the last one finishes (or at SECONDS): a fixed amount of work, as strace -c needs.
 * Prints "cycles N errors E seconds S rate R".  C, so that the load generator is never
 * the bottleneck of what it measures.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, SENT_CONNECT, SENT_GET };

typedef struct {
    int fd, state;
    char buf[8192];
    size_t len;
    long body_left; /* -1 while reading the head */
} client_t;

static int tunnel, proxy_port, target_port, epfd;
static long cycles, errors, started, max_cycles, active;
static char connect_req[256], get_req[256];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void start(client_t *c) {
    if (max_cycles && started >= max_cycles) { c->fd = -1; active--; return; }
    started++;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    addr.sin_port = htons(tunnel ? proxy_port : target_port);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    c->len = 0;
    c->body_left = -1;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(1);
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void finish(client_t *c, int ok) {
    if (ok) cycles++; else errors++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    start(c);
}

static void send_all(client_t *c, const char *data) {
    size_t n = strlen(data);
    if (send(c->fd, data, n, MSG_NOSIGNAL) != (ssize_t)n) finish(c, 0);
}

/* returns 1 when the message in c->buf is complete (head, and body if any) */
static int parse(client_t *c, int want_body) {
    if (c->body_left < 0) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end) return 0;
        if (c->len < 12 || memcmp(c->buf + 9, "200", 3) != 0) return -1;
        size_t head = end + 4 - c->buf;
        long length = 0;
        if (want_body) {
            char *cl = memmem(c->buf, head, "Content-Length:", 15);
            if (!cl) cl = memmem(c->buf, head, "content-length:", 15);
            if (cl) length = strtol(cl + 15, NULL, 10);
        }
        c->body_left = length - (long)(c->len - head);
        c->len = 0;
    } else {
        c->body_left -= (long)c->len;
        c->len = 0;
    }
    return c->body_left <= 0;
}

static void on_event(client_t *c, unsigned events) {
    if (events & (EPOLLERR | EPOLLHUP) && c->state == CONNECTING) { finish(c, 0); return; }
    if (c->state == CONNECTING) {
        if (!(events & EPOLLOUT)) return;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->state = tunnel ? SENT_CONNECT : SENT_GET;
        send_all(c, tunnel ? connect_req : get_req);
        return;
    }
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (n <= 0) {
        if (n < 0 && errno == EAGAIN) return;
        finish(c, 0);
        return;
    }
    c->len += n;
    int done = parse(c, c->state == SENT_GET);
    if (done < 0) { finish(c, 0); return; }
    if (!done) return;
    if (c->state == SENT_CONNECT) {
        c->state = SENT_GET;
        c->body_left = -1;
        send_all(c, get_req);
    } else {
        finish(c, 1);
    }
}

/* ---- bulk: blocking sockets, one thread per stream ---- */
#define BULK_BUF (1 << 18)
static double bulk_end;
static int bulk_down;
static volatile long long bulk_bytes;

static int dial(int port) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    addr.sin_port = htons(port);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); exit(1); }
    return fd;
}

static void *serve_one(void *arg) {
    int fd = (int)(long)arg;
    char *buf = malloc(BULK_BUF), mode = 0;
    memset(buf, 'b', BULK_BUF);
    if (recv(fd, &mode, 1, MSG_WAITALL) == 1) {
        if (mode == 'D')
            while (send(fd, buf, BULK_BUF, MSG_NOSIGNAL) > 0) {}
        else
            while (recv(fd, buf, BULK_BUF, 0) > 0) {}
    }
    close(fd);
    free(buf);
    return NULL;
}

static int serve(int port) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    addr.sin_port = htons(port);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 128) < 0) { perror("bind"); return 1; }
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) continue;
        pthread_t t;
        pthread_create(&t, NULL, serve_one, (void *)(long)fd);
        pthread_detach(t);
    }
}

static void *bulk_stream(void *arg) {
    int *ports = arg, fd = dial(ports[0] ? ports[0] : ports[1]);
    char *buf = malloc(BULK_BUF);
    memset(buf, 'c', BULK_BUF);
    if (ports[0]) {
        int n = snprintf(buf, 256, "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", ports[1]);
        send(fd, buf, n, 0);
        size_t got = 0;
        while (!memmem(buf, got, "\r\n\r\n", 4)) {
            ssize_t r = recv(fd, buf + got, 1, 0);
            if (r <= 0) { fprintf(stderr, "tunnel refused\n"); exit(1); }
            got += r;
        }
        if (memcmp(buf + 9, "200", 3) != 0) { fprintf(stderr, "tunnel refused\n"); exit(1); }
        memset(buf, 'c', BULK_BUF);
    }
    char mode = bulk_down ? 'D' : 'U';
    send(fd, &mode, 1, 0);
    long long mine = 0;
    while (now() < bulk_end) {
        ssize_t n = bulk_down ? recv(fd, buf, BULK_BUF, 0) : send(fd, buf, BULK_BUF, MSG_NOSIGNAL);
        if (n <= 0) break;
        mine += n;
    }
    __sync_fetch_and_add(&bulk_bytes, mine);
    close(fd);
    free(buf);
    return NULL;
}

static int bulk(int proxy, int target, int down, int streams, double seconds) {
    int ports[2] = {proxy, target};
    bulk_down = down;
    double begin = now();
    bulk_end = begin + seconds;
    pthread_t threads[64];
    for (int i = 0; i < streams && i < 64; i++) pthread_create(&threads[i], NULL, bulk_stream, ports);
    for (int i = 0; i < streams && i < 64; i++) pthread_join(threads[i], NULL);
    double elapsed = now() - begin;
    printf("bytes %lld seconds %.3f mbps %.1f\n", bulk_bytes, elapsed, bulk_bytes / elapsed / 1e6);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]));
    if (argc == 7 && strcmp(argv[1], "bulk") == 0)
        return bulk(atoi(argv[2]), atoi(argv[3]), strcmp(argv[4], "down") == 0, atoi(argv[5]), atof(argv[6]));
    if (argc < 5) {
        fprintf(stderr, "usage: loadgen connect PROXY_PORT TARGET_PORT CLIENTS SECONDS [CYCLES]\n"
                        "       loadgen direct TARGET_PORT CLIENTS SECONDS [CYCLES]\n");
        return 2;
    }
    tunnel = strcmp(argv[1], "connect") == 0;
    int arg = 2;
    if (tunnel) proxy_port = atoi(argv[arg++]);
    target_port = atoi(argv[arg++]);
    int clients = atoi(argv[arg++]);
    double seconds = atof(argv[arg++]);
    if (arg < argc) max_cycles = atol(argv[arg++]);
    snprintf(connect_req, sizeof connect_req, "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
             target_port, target_port);
    snprintf(get_req, sizeof get_req, "GET /small HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", target_port);
    epfd = epoll_create1(0);
    client_t *all = calloc(clients, sizeof *all);
    active = clients;
    for (int i = 0; i < clients; i++) start(&all[i]);
    double begin = now(), end = begin + seconds;
    struct epoll_event events[256];
    while (now() < end && active > 0) {
        int n = epoll_wait(epfd, events, 256, 50);
        for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
    }
    double elapsed = now() - begin;
    printf("cycles %ld errors %ld seconds %.3f rate %.1f\n", cycles, errors, elapsed, cycles / elapsed);
    return 0;
}
