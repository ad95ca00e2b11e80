// The yardstick for leasehold's transport: a single-threaded epoll server that answers the same
// WebSocket handshake and the same lease messages as leasehold with no lease logic behind them.
// Every acquire is granted at once, except with --one-resource, where one resource is handed out
// in FIFO order (holder, then queued waiters), which is what `LoadBench handoff` measures.
// Benchmark code: it trusts the client (small frames, one handshake per read).
//   NoopServer PORT [--one-resource]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { MAX_FD = 65536, BUFFER = 4096 };

struct client {
    int open, upgraded;
    size_t used;
    unsigned char in[BUFFER];
    int queued_next;  // next fd in the waiting line, -1 at the end
    int waiting;
};

static struct client *clients[MAX_FD];
static int one_resource;
static int holder = -1, head = -1, tail = -1;
static unsigned long lease_number;

static void send_all(int fd, const void *bytes, size_t count) {
    // Loopback sends of a few hundred bytes to a reader that keeps up do not block.
    (void)send(fd, bytes, count, MSG_NOSIGNAL);
}

static void send_text(int fd, const char *text) {
    unsigned char frame[512];
    size_t length = strlen(text);
    frame[0] = 0x81;
    size_t header = 2;
    if (length < 126) {
        frame[1] = (unsigned char)length;
    } else {
        frame[1] = 126;
        frame[2] = (unsigned char)(length >> 8);
        frame[3] = (unsigned char)length;
        header = 4;
    }
    memcpy(frame + header, text, length);
    send_all(fd, frame, header + length);
}

static void grant(int fd) {
    char text[256];
    lease_number++;
    snprintf(text, sizeof text,
             "{\"event\":\"granted\",\"lease\":\"L%lu\",\"resources\":[{\"name\":\"bench-7\",\"type\":\"bench\",\"epoch\":%lu,\"attributes\":{}}]}",
             lease_number, lease_number);
    send_text(fd, text);
}

static void leave(int fd) {
    if (!one_resource) return;
    if (holder == fd) {
        holder = head;
        if (head >= 0) {
            head = clients[head]->queued_next;
            if (head < 0) tail = -1;
            clients[holder]->waiting = 0;
            grant(holder);
        }
        return;
    }
    if (!clients[fd]->waiting) return;
    // Unlink a waiter that left (rare in the benchmark: a linear walk is fine).
    int previous = -1;
    for (int at = head; at >= 0; previous = at, at = clients[at]->queued_next) {
        if (at != fd) continue;
        if (previous < 0) head = clients[at]->queued_next; else clients[previous]->queued_next = clients[at]->queued_next;
        if (tail == fd) tail = previous;
        break;
    }
}

static void drop(int epoll, int fd) {
    leave(fd);
    epoll_ctl(epoll, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(clients[fd]);
    clients[fd] = NULL;
}

static void acquire(int fd) {
    if (!one_resource || holder < 0) {
        if (one_resource) holder = fd;
        grant(fd);
        return;
    }
    int position = 1;
    for (int at = head; at >= 0; at = clients[at]->queued_next) position++;
    clients[fd]->waiting = 1;
    clients[fd]->queued_next = -1;
    if (tail >= 0) clients[tail]->queued_next = fd; else head = fd;
    tail = fd;
    char text[128];
    snprintf(text, sizeof text, "{\"event\":\"queued\",\"lease\":\"L%lu\",\"position\":%d}", ++lease_number, position);
    send_text(fd, text);
}

static int upgrade(int fd, struct client *c) {
    unsigned char *end = memmem(c->in, c->used, "\r\n\r\n", 4);
    if (!end) return 0;
    const char *name = "Sec-WebSocket-Key: ";
    unsigned char *key = memmem(c->in, (size_t)(end - c->in), name, strlen(name));
    if (!key) return -1;
    key += strlen(name);
    unsigned char *key_end = memmem(key, (size_t)(end + 2 - key), "\r\n", 2);
    char joined[128];
    size_t key_length = (size_t)(key_end - key);
    if (key_length > 64) return -1;
    memcpy(joined, key, key_length);
    memcpy(joined + key_length, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((unsigned char *)joined, key_length + 36, digest);
    char accept[64];
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t out = 0;
    for (int i = 0; i < 21; i += 3) {
        unsigned value = (unsigned)digest[i] << 16 | (i + 1 < 20 ? (unsigned)digest[i + 1] << 8 : 0) | (i + 2 < 20 ? digest[i + 2] : 0);
        accept[out++] = alphabet[value >> 18 & 63];
        accept[out++] = alphabet[value >> 12 & 63];
        accept[out++] = i + 1 < 20 ? alphabet[value >> 6 & 63] : '=';
        accept[out++] = i + 2 < 20 ? alphabet[value & 63] : '=';
    }
    accept[out] = 0;
    char response[256];
    int length = snprintf(response, sizeof response,
                          "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept);
    send_all(fd, response, (size_t)length);
    size_t consumed = (size_t)(end + 4 - c->in);
    memmove(c->in, c->in + consumed, c->used - consumed);
    c->used -= consumed;
    c->upgraded = 1;
    return 1;
}

// Handles whole frames in the buffer; returns -1 when the connection is to be closed.
static int frames(int fd, struct client *c) {
    for (;;) {
        if (c->used < 2) return 0;
        unsigned opcode = c->in[0] & 0x0f;
        size_t length = c->in[1] & 0x7f, header = 2 + 4;
        if (length == 126) {
            if (c->used < 4) return 0;
            length = (size_t)c->in[2] << 8 | c->in[3];
            header = 4 + 4;
        } else if (length == 127) {
            return -1;
        }
        if (c->used < header + length) return 0;
        if (opcode == 0x1) {
            acquire(fd);
        } else if (opcode == 0x8) {
            static const unsigned char close_frame[] = {0x88, 0x02, 0x03, 0xe8};
            send_all(fd, close_frame, sizeof close_frame);
            return -1;
        }
        memmove(c->in, c->in + header + length, c->used - header - length);
        c->used -= header + length;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: NoopServer PORT [--one-resource]\n"); return 2; }
    one_resource = argc > 2 && strcmp(argv[2], "--one-resource") == 0;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int yes = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1024) != 0) {
        perror("NoopServer: bind/listen");
        return 1;
    }
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event);
    printf("listening on 127.0.0.1:%s\n", argv[1]);
    fflush(stdout);
    struct epoll_event events[256];
    for (;;) {
        int count = epoll_wait(epoll, events, 256, -1);
        if (count < 0 && errno == EINTR) continue;
        for (int index = 0; index < count; index++) {
            int fd = events[index].data.fd;
            if (fd == listener) {
                for (int accepted = 0; accepted < 64; accepted++) {
                    int client = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (client < 0) break;
                    if (client >= MAX_FD) { close(client); continue; }
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
                    clients[client] = calloc(1, sizeof(struct client));
                    clients[client]->queued_next = -1;
                    struct epoll_event watch = {.events = EPOLLIN, .data.fd = client};
                    epoll_ctl(epoll, EPOLL_CTL_ADD, client, &watch);
                }
                continue;
            }
            struct client *c = clients[fd];
            if (!c) continue;
            ssize_t got = read(fd, c->in + c->used, BUFFER - c->used);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                drop(epoll, fd);
                continue;
            }
            c->used += (size_t)got;
            int result = c->upgraded ? 0 : upgrade(fd, c);
            if (result >= 0 && c->upgraded) result = frames(fd, c);
            if (result < 0 || c->used == BUFFER) drop(epoll, fd);
        }
    }
}
