/* A slow disk, for measurements and tests: every fsync and fdatasync of the
 * process it is preloaded into waits SLOW_FSYNC_US microseconds (default 5000)
 * before doing the real one.
 *
 *   gcc -shared -fPIC -O2 -o /tmp/slow_fsync.so scripts/slow_fsync.c -ldl
 *   LD_PRELOAD=/tmp/slow_fsync.so SLOW_FSYNC_US=3000 uv run pytest --no-cov
 *   LD_PRELOAD=/tmp/slow_fsync.so uv run python scripts/bench_ab.py OLD=../old NEW=.
 *
 * SQLite's commits reach the disk through these calls too, so the gate
 * (daemon/gate.py) sees a slow disk and frees its turn at every fsync.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static unsigned delay_us(void) {
    const char *s = getenv("SLOW_FSYNC_US");
    return s ? (unsigned)atoi(s) : 5000;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    usleep(delay_us());
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    usleep(delay_us());
    return real(fd);
}
