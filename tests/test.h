/* test.h: a small test framework.  Each TEST registers itself at start-up;
 * the runner (tests/runner.c) forks one process per test with a timeout, so
 * a crash or hang fails that test alone, and ends with the line
 * "<suite>: N passed, N failed".  Filter with FLOWD_TEST=substring. */
#ifndef FLOWD_TEST_H
#define FLOWD_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn, int timeout_s);
void test_fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
extern int test_failures; /* failures in the current test */

#define TEST_T(name, timeout)                                                   \
    static void test_##name(void);                                              \
    __attribute__((constructor)) static void test_reg_##name(void) {            \
        test_register(#name, __FILE__, test_##name, timeout);                   \
    }                                                                           \
    static void test_##name(void)
#define TEST(name) TEST_T(name, 120)

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) test_fail_at(__FILE__, __LINE__, "CHECK(%s)", #cond);     \
    } while (0)
#define CHECK_MSG(cond, ...)                                                    \
    do {                                                                        \
        if (!(cond)) test_fail_at(__FILE__, __LINE__, __VA_ARGS__);            \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                      \
    do {                                                                        \
        long long a_ = (long long)(a), b_ = (long long)(b);                     \
        if (a_ != b_)                                                           \
            test_fail_at(__FILE__, __LINE__, "%s == %s (%lld vs %lld)", #a, #b, \
                         a_, b_);                                               \
    } while (0)
/* |a-b| <= atol + rtol*|b| */
#define CHECK_CLOSE(a, b, atol, rtol)                                           \
    do {                                                                        \
        double a_ = (double)(a), b_ = (double)(b);                              \
        if (!(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_)))                     \
            test_fail_at(__FILE__, __LINE__, "%s ~ %s (%.10g vs %.10g)", #a, #b,\
                         a_, b_);                                               \
    } while (0)
#define REQUIRE(cond)                                                           \
    do {                                                                        \
        if (!(cond)) {                                                          \
            test_fail_at(__FILE__, __LINE__, "REQUIRE(%s)", #cond);            \
            return;                                                             \
        }                                                                       \
    } while (0)

#endif
