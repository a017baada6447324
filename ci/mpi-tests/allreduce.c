/* Allreduce smoke test for chrun's MPI tests (C, any MPI >= 3).

   Prints one line per rank, the same as allreduce.py:
     rank R size S localsize L sum OK|BAD user:<inode> mnt:<inode> host:<hostname>
   Exit status 1 if the allreduce gave a wrong sum. */
#include <mpi.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static unsigned long long ns_inode(const char *path)
{
   struct stat st;
   return stat(path, &st) == 0 ? (unsigned long long)st.st_ino : 0;
}

int main(int argc, char **argv)
{
   int rank, size, lsize;
   long long mine, total = -1;
   char host[256] = "?";
   MPI_Comm local;

   MPI_Init(&argc, &argv);
   MPI_Comm_rank(MPI_COMM_WORLD, &rank);
   MPI_Comm_size(MPI_COMM_WORLD, &size);
   MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
   MPI_Comm_size(local, &lsize);
   mine = rank;
   MPI_Allreduce(&mine, &total, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
   int ok = total == (long long)size * (size - 1) / 2;
   gethostname(host, sizeof(host) - 1);
   printf("rank %d size %d localsize %d sum %s user:%llu mnt:%llu host:%s\n",
          rank, size, lsize, ok ? "OK" : "BAD",
          ns_inode("/proc/self/ns/user"), ns_inode("/proc/self/ns/mnt"), host);
   fflush(stdout);
   MPI_Comm_free(&local);
   MPI_Finalize();
   return ok ? 0 : 1;
}
