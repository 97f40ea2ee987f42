/* dblock.c: one daemon per database (issue 15).
 *
 * Two `flowd serve` on one database file would both resume the jobs found
 * running and both take queued ones: the same job trained twice, its
 * checkpoints and published versions interleaved.  The daemon therefore
 * holds an exclusive flock(2) on DB.lock, beside the database, for as long
 * as it runs; a second one finds it held and refuses to start, naming the
 * holder's pid.  The kernel releases the lock when the process ends, also on
 * SIGKILL or a crash, so a stale lock file never blocks a restart.  Other
 * commands (migrate, import, export) take no lock: they run no jobs, and
 * SQLite serialises their writes. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

int fd_db_lock_exclusive(const char *db_path, char *err, size_t errlen) {
    if (!db_path || !*db_path || !strcmp(db_path, ":memory:") || !strncmp(db_path, "file:", 5)) return -2;
    char path[4096];
    if (snprintf(path, sizeof path, "%s.lock", db_path) >= (int)sizeof path) {
        snprintf(err, errlen, "database path too long");
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        /* a directory that does not exist yet: fd_db_open says so better */
        if (errno == ENOENT) return -2;
        snprintf(err, errlen, "cannot open the lock file %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        close(fd);
        if (e == EWOULDBLOCK)
            snprintf(err, errlen, "another flowd serve (pid %s) is running on the database %s (it holds %s); "
                     "one daemon per database", *pid ? pid : "?", db_path, path);
        else snprintf(err, errlen, "cannot lock %s: %s", path, strerror(e));
        return -1;
    }
    char pid[32];
    int k = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)k, 0) != k) { /* the pid is for the message only */
    }
    return fd; /* held until the process ends */
}
