/* The spawn server's parts (ext/mathrun-spawn.c: the loop, requests, fork;
 * ext/spawn-wire.c: the output queue; ext/spawn-jobs.c: reading a request,
 * finding and killing what a job left; ext/spawn-open.c: files opened as a
 * front end's client). */
#ifndef MATHRUN_SPAWN_H
#define MATHRUN_SPAWN_H

#include "jail.h"

#include <stddef.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <time.h>

#define SPAWN_MAX_JOBS 1024
#define SPAWN_MAX_ARGS 4096
#define SPAWN_MAX_FIELDS (SPAWN_MAX_ARGS + JAIL_MAX_ENV + 64)

/* One running job: its main process, and what finishing it needs. */
struct spawn_job {
    char id[32];
    pid_t pid;
    int errfd;            /* read end of the exec-error pipe */
    int statusfd;         /* unprivileged: read end of the namespace init's
                           * status pipe (struct jail_status), or -1 */
    int killed;           /* a kill request came */
    int ended;            /* main process reaped: status and ru hold */
    int status;
    struct rusage ru;
    struct timespec t0;
    uid_t uid;            /* the job user; (uid_t)-1 unprivileged */
    uid_t kill_ruid;
    char *kill_lock;
    char *count_file;     /* the slot's pids.current, or NULL */
    int keeper;           /* forked by the slot's keeper (spawn-keeper.c) */
    int keeper_left;      /* the keeper found processes left at its end */
    char output[80];      /* output-create's file, named again in `exited` */
};

/* A spawn request, pointing into the frame it was read from. */
struct spawn_request {
    const char *id;
    struct jail_config cfg;
    char *argv[SPAWN_MAX_ARGS + 1];
    char *env[JAIL_MAX_ENV + 1];
    const char *count_file;
    int output_fd;        /* output-fd=1: the job's stdout and stderr are the
                           * descriptor sent with the request (-1: pipes) */
    int stdin_null;       /* stdin=null: /dev/null instead of a pipe */
    int quiet;            /* quiet=1: no `spawned` (a job with no pipes back) */
    const char *output_create; /* output-create=PREFIX: the output file is made
                           * (PREFIX and 6 random characters, O_EXCL, 0600)
                           * in the directory sent with the request, as the
                           * as-uid, as-gid, as-groups user */
    const char *as[3];    /* as-uid, as-gid, as-groups */
    const char *output_name; /* the file output-create made (for `spawned`) */
    const char *raw;      /* the frame's fields after the verb, for a keeper */
    size_t raw_len;
};

/* The output queue (spawn-wire.c): frames of NUL-terminated fields, sent
 * whole and in order; a frame's fds go with its first byte and are closed
 * once sent.  spawn_send queues, spawn_flush sends what the socket takes
 * (the loop calls it once a turn: the turn's answers go out together). */
void spawn_wire_init(int sock);
void spawn_send(const char **fields, int nfields, const int *fds, int nfds);
void spawn_flush(void);
int spawn_output_pending(void);

/* An `open` request (spawn-open.c): fields after the verb, the id first;
 * `dirfd` the directory the frame brought, or -1.  Answers `opened`. */
void spawn_open(char **fields, int n, int dirfd);
/* The output file of an output-create request, made in `dirfd` as the
 * request's as-* user; its name into `name`; -1 with errno. */
int spawn_create_output(const struct spawn_request *rq, int dirfd, char *name, size_t size);

/* Fields after the verb (the id first) into `rq`; -1 with a message. */
int spawn_parse(char **fields, int n, struct spawn_request *rq, char *message, size_t size);

/* Whether anything of the job outlived its main process. */
int spawn_has_leftovers(const struct spawn_job *job);

/* Kill every process of the job; with `wait`, until none is left.
 * Returns how many were still alive at the end (0 without `wait`). */
int spawn_kill(struct spawn_job *job, int wait);

/* The job table (mathrun-spawn.c). */
struct spawn_job *spawn_find_job(const char *id, pid_t pid); /* by id, or (id NULL) by pid */
int spawn_add_job(struct spawn_job *job);                    /* -1: the table is full */
void spawn_forget_job(struct spawn_job *job);
int spawn_job_count(void);

/* From fork to report (spawn-run.c): start one job (answers `spawned`, or
 * `exited` with a failed report); report an ended one and forget it; a
 * failed report for a request that never became a job. */
/* 0: forked (or failed after the fork: reported); -1: failed before it
 * (reported). */
int spawn_start(struct spawn_request *rq, int dev_null, pid_t self_pid);
void spawn_finish(struct spawn_job *job);
void spawn_failed(const char *id, const char *stage, int code);

/* Reap ended children: a job's main is marked ended, orphans just go. */
void spawn_reap(void);

/* The running job whose main process is `pid`, or NULL. */
struct spawn_job *spawn_job_by_pid(pid_t pid);

/* The per-slot keepers (spawn-keeper.c, with --keeper): whether a request
 * goes to its slot's keeper; fork it there (the job's pid, its pidfd in
 * *pidfd; -1 with errno); the keepers' sockets for the loop's poll, and
 * what came on them (a job's end marks it ended). */
void keeper_enable(void);
int keeper_wanted(const struct spawn_request *rq);
pid_t keeper_spawn(struct spawn_request *rq, struct spawn_job *job, const int *stdio, int errw, int *pidfd);
struct pollfd;
int keeper_pollfds(struct pollfd *p, int max);
void keeper_events(const struct pollfd *p, int n);
void keeper_forget(const struct spawn_job *job);
void keeper_shutdown(void);

#endif
