/* cmabench: point-to-point latency and windowed bandwidth between MPI ranks 0 and 1.
 *
 *   mpirun -n 2 cmabench lat|bw [-s SIZE,SIZE,...] [-M MAXSIZE] [-x SCALE] [-w WINDOW]
 *
 * lat  ping-pong: rank 0 sends SIZE bytes, rank 1 sends them back; the latency is half the
 *      mean round trip, in microseconds.  Prints "lat SIZE USEC" per size.
 * bw   windowed bandwidth: per iteration rank 1 posts WINDOW MPI_Irecv, rank 0 WINDOW
 *      MPI_Isend, both wait for all, then rank 1 sends a 4-byte acknowledgement; the
 *      bandwidth is SIZE * WINDOW * iterations / time, in MB/s (MB = 10^6 bytes).
 *      Prints "bw SIZE MB_PER_S" per size.
 *
 * Default sizes: powers of two from 1 B to MAXSIZE (default 4 MiB).  Iterations shrink
 * with the size (see iterations()), times SCALE (default 1; at least 1 timed iteration).
 * Each size starts with untimed warm-up iterations.  Rank 0 also prints, per size,
 * "msgs METRIC SIZE N": the data messages of that size the run exchanged (warm-up
 * included), so counted system calls can be related to messages.
 *
 * Before each size every rank calls chdir("/cma-bench-mark/METRIC/SIZE") (and at the end
 * chdir("/cma-bench-mark/end")).  The call fails harmlessly, but in an strace log it marks
 * where each size begins, so the process_vm_readv calls that follow can be counted per size.
 * Output is flushed after every size: a job killed while hung still shows the last size done.
 */
#include <errno.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_SIZES 64
#define LARGE 8192 /* sizes above this get fewer iterations */

static void die(const char *msg)
{
    fprintf(stderr, "cmabench: %s\n", msg);
    MPI_Abort(MPI_COMM_WORLD, 2);
    exit(2);
}

static long parse_size(const char *s)
{
    char *end;
    errno = 0;
    long n = strtol(s, &end, 10);
    if (errno || end == s || n < 0)
        return -1;
    if (*end == 'K' || *end == 'k') { n <<= 10; end++; }
    else if (*end == 'M' || *end == 'm') { n <<= 20; end++; }
    else if (*end == 'G' || *end == 'g') { n <<= 30; end++; }
    if (*end == 'i') end++;
    if (*end == 'B') end++;
    return *end ? -1 : n;
}

static void mark(const char *metric, long size)
{
    char path[96];
    if (size < 0)
        snprintf(path, sizeof path, "/cma-bench-mark/end");
    else
        snprintf(path, sizeof path, "/cma-bench-mark/%s/%ld", metric, size);
    (void)chdir(path); /* fails (ENOENT); only the strace log needs to see it */
}

/* Timed iterations and warm-up iterations for SIZE, before scaling. */
static void iterations(int bw, long size, double scale, long *iters, long *warmup)
{
    long n, w;
    if (bw) { n = size > LARGE ? 20 : 100; w = size > LARGE ? 2 : 10; }
    else    { n = size > LARGE ? 100 : 1000; w = size > LARGE ? 10 : 100; }
    n = (long)(n * scale);
    w = (long)(w * scale);
    *iters = n < 1 ? 1 : n;
    *warmup = w < 1 ? 1 : w;
}

static double latency(int rank, char *sbuf, char *rbuf, long size, long iters, long warmup)
{
    double t0 = 0;
    for (long i = 0; i < warmup + iters; i++) {
        if (i == warmup) {
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
        }
        if (rank == 0) {
            MPI_Send(sbuf, (int)size, MPI_CHAR, 1, 1, MPI_COMM_WORLD);
            MPI_Recv(rbuf, (int)size, MPI_CHAR, 1, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(rbuf, (int)size, MPI_CHAR, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(sbuf, (int)size, MPI_CHAR, 0, 2, MPI_COMM_WORLD);
        }
    }
    return (MPI_Wtime() - t0) * 1e6 / (2.0 * iters);
}

static double bandwidth(int rank, char *sbuf, char *rbuf, long size, long iters, long warmup,
                        int window, MPI_Request *req, MPI_Status *st)
{
    double t0 = 0;
    int ack = 0;
    for (long i = 0; i < warmup + iters; i++) {
        if (i == warmup) {
            MPI_Barrier(MPI_COMM_WORLD);
            t0 = MPI_Wtime();
        }
        if (rank == 0) {
            for (int k = 0; k < window; k++)
                MPI_Isend(sbuf, (int)size, MPI_CHAR, 1, 3, MPI_COMM_WORLD, &req[k]);
            MPI_Waitall(window, req, st);
            MPI_Recv(&ack, 1, MPI_INT, 1, 4, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            for (int k = 0; k < window; k++)
                MPI_Irecv(rbuf, (int)size, MPI_CHAR, 0, 3, MPI_COMM_WORLD, &req[k]);
            MPI_Waitall(window, req, st);
            MPI_Send(&ack, 1, MPI_INT, 0, 4, MPI_COMM_WORLD);
        }
    }
    double t = MPI_Wtime() - t0;
    return (double)size * window * iters / t / 1e6;
}

int main(int argc, char **argv)
{
    long sizes[MAX_SIZES], maxsize = 4L << 20;
    int nsizes = 0, window = 64, bw;
    double scale = 1.0;
    const char *list = NULL;

    MPI_Init(&argc, &argv);
    int rank, nranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    if (argc < 2 || (strcmp(argv[1], "lat") && strcmp(argv[1], "bw")))
        die("usage: cmabench lat|bw [-s SIZE,...] [-M MAXSIZE] [-x SCALE] [-w WINDOW]");
    bw = !strcmp(argv[1], "bw");
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc)
            die("option without value");
        if (!strcmp(argv[i], "-s")) list = argv[++i];
        else if (!strcmp(argv[i], "-M")) {
            if ((maxsize = parse_size(argv[++i])) < 1) die("bad -M");
        } else if (!strcmp(argv[i], "-x")) {
            if ((scale = atof(argv[++i])) <= 0) die("bad -x");
        } else if (!strcmp(argv[i], "-w")) {
            if ((window = atoi(argv[++i])) < 1) die("bad -w");
        } else
            die("unknown option (usage: cmabench lat|bw [-s SIZE,...] [-M MAX] [-x SCALE] [-w W])");
    }
    if (nranks < 2)
        die("needs 2 ranks");
    if (list) {
        char *copy = strdup(list), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (nsizes == MAX_SIZES) die("too many sizes");
            if ((sizes[nsizes++] = parse_size(t)) < 0) die("bad size in -s");
        }
        free(copy);
    } else {
        for (long s = 1; s <= maxsize && nsizes < MAX_SIZES; s *= 2)
            sizes[nsizes++] = s;
    }
    long biggest = 1;
    for (int i = 0; i < nsizes; i++) {
        if (sizes[i] > 0x7fffffffL) die("size above 2 GiB - 1");
        if (sizes[i] > biggest) biggest = sizes[i];
    }
    char *sbuf, *rbuf;
    long page = sysconf(_SC_PAGESIZE);
    if (posix_memalign((void **)&sbuf, page, biggest) || posix_memalign((void **)&rbuf, page, biggest))
        die("out of memory");
    memset(sbuf, 'a', biggest); /* touch every page before timing */
    memset(rbuf, 'b', biggest);
    MPI_Request *req = malloc(sizeof *req * window);
    MPI_Status *st = malloc(sizeof *st * window); /* not MPI_STATUSES_IGNORE: gcc 12 warns */
    if (!req || !st) die("out of memory");

    if (rank == 0) {
        char version[MPI_MAX_LIBRARY_VERSION_STRING];
        int len;
        MPI_Get_library_version(version, &len);
        version[strcspn(version, "\n,")] = 0;
        printf("# cmabench %s: %s; window %d; scale %g\n", argv[1], version, window, scale);
        fflush(stdout);
    }
    const char *metric = bw ? "bw" : "lat";
    for (int i = 0; i < nsizes; i++) {
        long iters, warmup, size = sizes[i];
        iterations(bw, size, scale, &iters, &warmup);
        mark(metric, size);
        MPI_Barrier(MPI_COMM_WORLD);
        double v = bw ? bandwidth(rank, sbuf, rbuf, size, iters, warmup, window, req, st)
                      : latency(rank, sbuf, rbuf, size, iters, warmup);
        if (rank == 0) {
            long msgs = (warmup + iters) * (bw ? window : 2);
            printf("msgs %s %ld %ld\n%s %ld %.6g\n", metric, size, msgs, metric, size, v);
            fflush(stdout);
        }
    }
    mark(metric, -1);
    MPI_Barrier(MPI_COMM_WORLD);
    free(req);
    free(st);
    free(sbuf);
    free(rbuf);
    MPI_Finalize();
    return 0;
}
