/* test_durable_write.c: nf_file_write is durable (issue 15): the data is
 * fsynced before the rename, and the directory after it, so that the file
 * (`flowd export`, and what uses nf_file_write) exists after a power loss,
 * not only its blocks.
 *
 * fsync is interposed for this binary: while `watch` is set, each call
 * records whether its fd is a directory and whether the target already
 * had its final name (the rename came first); every call goes on to the
 * real system call. */
#include "../test.h"

#include "../../core/model.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int watch, n_file, n_dir_after_rename;
static const char *target;

int fsync(int fd) {
    if (watch) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (access(target, F_OK) == 0) n_dir_after_rename++;
        } else {
            n_file++;
        }
    }
    return (int)syscall(SYS_fsync, fd);
}

TEST(durable_file_write_syncs_data_then_directory) {
    char dir[] = "/tmp/flowd_durable_XXXXXX";
    REQUIRE(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/model.flow", dir);
    target = path;
    watch = 1;
    CHECK_EQ_INT(nf_file_write(path, "abcdef", 6), 0);
    watch = 0;
    CHECK_EQ_INT(n_file, 1);
    CHECK_MSG(n_dir_after_rename == 1, "the directory was fsynced %d times after the rename", n_dir_after_rename);
    void *buf = NULL;
    size_t len = 0;
    CHECK(nf_file_read(path, &buf, &len) == 0 && len == 6 && !memcmp(buf, "abcdef", 6));
    free(buf);
    /* a bare file name: the current directory */
    CHECK_EQ_INT(nf_fsync_dir("model.flow"), 0);
    unlink(path);
    rmdir(dir);
}
