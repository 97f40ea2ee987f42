/* runner.c: runs every registered TEST in its own forked process with a
 * timeout and prints "<suite>: N passed, N failed" as its last line.
 * FLOWD_NO_FORK=1 runs the tests in this process, one after the other, with
 * no timeout (for valgrind: one process, and leaks reported at exit).
 * FLOWD_TEST_EXCLUDE=a,b,... skips the tests whose name or file contains
 * one of the comma-separated substrings. */
#include "test.h"

#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct { const char *name, *file; test_fn fn; int timeout; } test_case;
static test_case tests[1024];
static int ntests;
int test_failures;

void test_register(const char *name, const char *file, test_fn fn, int timeout_s) {
    if (ntests < (int)(sizeof tests / sizeof tests[0]))
        tests[ntests++] = (test_case){name, file, fn, timeout_s};
}

void test_fail_at(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    if (test_failures < 20) {
        fprintf(stderr, "    %s:%d: ", file, line);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    }
    test_failures++;
}

static int excluded(const test_case *t, const char *ex) {
    while (ex && *ex) {
        const char *c = strchr(ex, ',');
        size_t n = c ? (size_t)(c - ex) : strlen(ex);
        char part[128];
        if (n > 0 && n < sizeof part) {
            memcpy(part, ex, n);
            part[n] = 0;
            if (strstr(t->name, part) || strstr(t->file, part)) return 1;
        }
        ex = c ? c + 1 : NULL;
    }
    return 0;
}

static int cmp_case(const void *a, const void *b) {
    const test_case *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv) {
    const char *suite = argc > 1 ? argv[1] : "tests";
    const char *filter = getenv("FLOWD_TEST");
    int passed = 0, failed = 0;
    double scale = getenv("FLOWD_TIMEOUT_SCALE") ? atof(getenv("FLOWD_TIMEOUT_SCALE")) : 1.0;
    if (scale <= 0) scale = 1.0;
    const char *nf = getenv("FLOWD_NO_FORK");
    int no_fork = nf && *nf && strcmp(nf, "0");
    qsort(tests, ntests, sizeof tests[0], cmp_case);
    for (int i = 0; i < ntests; i++) {
        if (filter && !strstr(tests[i].name, filter) && !strstr(tests[i].file, filter)) continue;
        if (excluded(&tests[i], getenv("FLOWD_TEST_EXCLUDE"))) continue;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        fflush(stdout);
        fflush(stderr);
        if (no_fork) {
            test_failures = 0;
            tests[i].fn();
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
            if (test_failures) failed++, printf("FAIL %-48s (%s)\n", tests[i].name, tests[i].file);
            else passed++, printf("PASS %-48s %8.1f ms\n", tests[i].name, ms);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            alarm((unsigned)(tests[i].timeout * scale + 0.5));
            test_failures = 0;
            tests[i].fn();
            fflush(stdout);
            fflush(stderr);
            _exit(test_failures ? 1 : 0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (ok) {
            passed++;
            printf("PASS %-48s %8.1f ms\n", tests[i].name, ms);
        } else {
            failed++;
            if (WIFSIGNALED(st))
                printf("FAIL %-48s (signal %d%s)\n", tests[i].name, WTERMSIG(st),
                       WTERMSIG(st) == SIGALRM ? ": timeout" : "");
            else
                printf("FAIL %-48s (%s)\n", tests[i].name, tests[i].file);
        }
    }
    printf("%s: %d passed, %d failed\n", suite, passed, failed);
    return failed ? 1 : 0;
}
