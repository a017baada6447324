/* cma-probe: test helper for cross-memory attach (process_vm_readv).
 *
 *   cma-probe serve [SECONDS]  fill a 4096-byte buffer with "chrun-cma-probe"
 *                              repeated, print "PID 0xADDR", then sleep until
 *                              killed (at most SECONDS, default 600; 0 = forever)
 *   cma-probe read PID ADDR    process_vm_readv 4096 bytes from PID at ADDR;
 *                              print "ok" (exit 0) if the pattern matches, else
 *                              "errno N (strerror)" or "mismatch" (exit 1)
 *   cma-probe nsinfo           print "user:INODE mnt:INODE" of this process
 *
 * Built static (gcc -static) so it runs inside the busybox test image.
 * Usage errors exit 2. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define SIZE 4096
static const char PATTERN[] = "chrun-cma-probe";
static char buf[SIZE] __attribute__((aligned(SIZE)));

static void fill(char *p)
{
    for (size_t i = 0; i < SIZE; i++)
        p[i] = PATTERN[i % (sizeof PATTERN - 1)];
}

static int usage(void)
{
    fprintf(stderr, "usage: cma-probe serve [SECONDS] | read PID ADDR | nsinfo\n");
    return 2;
}

static int fail_errno(void)
{
    int e = errno;
    printf("errno %d (%s)\n", e, strerror(e));
    return 1;
}

static int parse(const char *s, int base, unsigned long *out)
{
    char *end;
    errno = 0;
    *out = strtoul(s, &end, base);
    return !(errno || end == s || *end);
}

static int serve(int argc, char **argv)
{
    unsigned long secs = 600;
    if (argc > 3 || (argc == 3 && !parse(argv[2], 10, &secs)))
        return usage();
    fill(buf);
    printf("%ld 0x%lx\n", (long)getpid(), (unsigned long)buf);
    fflush(stdout);
    if (secs)
        alarm(secs); /* never outlive a crashed test for long */
    for (;;)
        pause();
}

static int do_read(int argc, char **argv)
{
    unsigned long pid, addr;
    char got[SIZE], want[SIZE];
    if (argc != 4 || !parse(argv[2], 10, &pid) || !parse(argv[3], 16, &addr))
        return usage();
    struct iovec local = {got, SIZE}, remote = {(void *)addr, SIZE};
    ssize_t n = process_vm_readv((pid_t)pid, &local, 1, &remote, 1, 0);
    if (n < 0)
        return fail_errno();
    fill(want);
    if (n != SIZE || memcmp(got, want, SIZE)) {
        printf("mismatch (read %zd bytes)\n", n);
        return 1;
    }
    printf("ok\n");
    return 0;
}

static int nsinfo(void)
{
    struct stat u, m;
    if (stat("/proc/self/ns/user", &u) || stat("/proc/self/ns/mnt", &m))
        return fail_errno();
    printf("user:%lu mnt:%lu\n", (unsigned long)u.st_ino, (unsigned long)m.st_ino);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (!strcmp(argv[1], "serve"))
        return serve(argc, argv);
    if (!strcmp(argv[1], "read"))
        return do_read(argc, argv);
    if (!strcmp(argv[1], "nsinfo") && argc == 2)
        return nsinfo();
    return usage();
}
