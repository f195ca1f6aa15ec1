/* The spawn server's output queue: frames of NUL-terminated fields, sent
 * whole and in order on the socket, never blocking the loop; a frame's
 * descriptors go with its first byte and are closed once sent.  See
 * spawn.h and mathrun-spawn.c. */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct out_frame {
    struct out_frame *next;
    size_t len, off;
    int fds[4], nfds;
    char data[];
};

static struct out_frame *out_head, *out_tail;
static int wire_sock = -1;

void spawn_wire_init(int sock)
{
    wire_sock = sock;
}

int spawn_output_pending(void)
{
    return out_head != NULL;
}

/* Drop every queued frame (the peer is gone), closing the fds not sent. */
static void drop_output(void)
{
    while (out_head) {
        struct out_frame *f = out_head;
        out_head = f->next;
        if (f->off == 0)
            for (int i = 0; i < f->nfds; i++)
                close(f->fds[i]);
        free(f);
    }
    out_tail = NULL;
}

/* One sendmsg of the head frame's rest and of the frames after it that
 * bring no fds (a batch of reports goes out in one call); the head's fds
 * go with its first byte. */
static ssize_t send_batch(struct out_frame *f)
{
    struct iovec iov[64];
    int n = 0;
    for (struct out_frame *g = f; g && n < 64 && (g == f || g->nfds == 0); g = g->next, n++) {
        iov[n].iov_base = g->data + g->off;
        iov[n].iov_len = g->len - g->off;
    }
    union {
        char buf[CMSG_SPACE(sizeof f->fds)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = n};
    if (f->off == 0 && f->nfds) {
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(f->nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(f->nfds * sizeof(int));
        memcpy(CMSG_DATA(c), f->fds, f->nfds * sizeof(int));
    }
    return sendmsg(wire_sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

void spawn_flush(void)
{
    while (out_head) {
        ssize_t n = send_batch(out_head);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                drop_output();
            return;
        }
        if (out_head->off == 0) { /* the fds went with the first byte */
            for (int i = 0; i < out_head->nfds; i++)
                close(out_head->fds[i]);
            out_head->nfds = 0;
        }
        while (out_head && (size_t)n >= out_head->len - out_head->off) {
            struct out_frame *f = out_head;
            n -= f->len - f->off;
            out_head = f->next;
            free(f);
        }
        if (!out_head) {
            out_tail = NULL;
            return;
        }
        if (n > 0) {
            out_head->off += n;
            return; /* the socket is full */
        }
    }
}

void spawn_send(const char **fields, int nfields, const int *fds, int nfds)
{
    size_t len = 0;
    for (int i = 0; i < nfields; i++)
        len += strlen(fields[i]) + 1;
    struct out_frame *f = malloc(sizeof *f + 4 + len);
    if (!f)
        abort();
    f->next = NULL;
    f->len = 4 + len;
    f->off = 0;
    f->nfds = nfds;
    memcpy(f->fds, fds, nfds * sizeof(int));
    unsigned char *p = (unsigned char *)f->data;
    p[0] = len & 0xff, p[1] = (len >> 8) & 0xff, p[2] = (len >> 16) & 0xff, p[3] = len >> 24;
    p += 4;
    for (int i = 0; i < nfields; i++) {
        size_t n = strlen(fields[i]) + 1;
        memcpy(p, fields[i], n);
        p += n;
    }
    if (out_tail)
        out_tail->next = f;
    else
        out_head = f;
    out_tail = f;
    /* Not sent at once: a batch of answers of one loop turn goes out in
     * as few sendmsg calls as the fds allow (spawn_flush, end of turn). */
}
