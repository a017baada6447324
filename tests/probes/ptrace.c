/* ptrace-probe PID ADDR: attach to PID with PTRACE_SEIZE + PTRACE_INTERRUPT,
 * wait for the stop, PTRACE_PEEKDATA one word at ADDR, compare it with the
 * start of the pattern that "cma-probe serve" writes, then detach (the target
 * keeps running). Prints "ok" (exit 0), or "errno N (strerror)" / "mismatch"
 * (exit 1). Usage errors exit 2. Built static for the busybox test image. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static const char PATTERN[] = "chrun-cma-probe";

static int fail_errno(void)
{
    int e = errno;
    printf("errno %d (%s)\n", e, strerror(e));
    return 1;
}

int main(int argc, char **argv)
{
    char *end1, *end2;
    if (argc != 3) {
        fprintf(stderr, "usage: ptrace-probe PID ADDR\n");
        return 2;
    }
    errno = 0;
    pid_t pid = (pid_t)strtol(argv[1], &end1, 10);
    unsigned long addr = strtoul(argv[2], &end2, 16);
    if (errno || *end1 || *end2 || pid <= 0) {
        fprintf(stderr, "usage: ptrace-probe PID ADDR\n");
        return 2;
    }

    if (ptrace(PTRACE_SEIZE, pid, 0, 0) == -1)
        return fail_errno();
    int st;
    if (ptrace(PTRACE_INTERRUPT, pid, 0, 0) == -1 || waitpid(pid, &st, __WALL) == -1)
        return fail_errno();
    if (!WIFSTOPPED(st)) {
        printf("target did not stop (status 0x%x)\n", st);
        return 1;
    }
    errno = 0;
    long word = ptrace(PTRACE_PEEKDATA, pid, (void *)addr, 0);
    int peek_errno = errno;
    if (ptrace(PTRACE_DETACH, pid, 0, 0) == -1)
        return fail_errno();
    if (peek_errno) {
        errno = peek_errno;
        return fail_errno();
    }
    if (memcmp(&word, PATTERN, sizeof word)) {
        printf("mismatch\n");
        return 1;
    }
    printf("ok\n");
    return 0;
}
