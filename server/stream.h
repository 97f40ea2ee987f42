/* stream.h: large answers written as they are sent (issue 15).
 *
 * A sample, encode or decode answer of up to 16 Mi values was printed
 * whole: a cJSON node and a text per row, then the printed document, some
 * 40 bytes a value beside the 4 of the numbers.  An fd_answer holds the
 * numbers (taken from the handler) and the few small members, and writes
 * the JSON (or CSV) text a block at a time while libmicrohttpd sends it
 * (chunked transfer encoding), so an answer costs its numbers plus one
 * 64 KiB block.  The text is byte for byte what the whole-document answer
 * was: members in the order added, %.9g numbers, null for a non-finite
 * one, a newline at the end.  Pure code (no HTTP): the sending is
 * fd_send_answer in http.c, and fuzz/fuzz_request.c reads answers back. */
#ifndef FD_STREAM_H
#define FD_STREAM_H

#include "../core/nf.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct fd_answer fd_answer;

/* A JSON object answer whose first members are head's (taken; a small
 * object), or NULL without memory. */
fd_answer *fd_answer_json(cJSON *head);
/* A CSV answer: a header line x0,x1,... then the rows of the first
 * fd_answer_reals (D > 0), as nf_data_csv writes them. */
fd_answer *fd_answer_csv(void);
/* Append member key: n rows of D reals ([[..],..]), or with D == 0 a flat
 * array of n reals.  v (malloc'd) is taken, also on failure (-1). */
int fd_answer_reals(fd_answer *a, const char *key, nf_real *v, size_t n, int D);
/* Append member key: a flat array of n ints (v taken as above). */
int fd_answer_ints(fd_answer *a, const char *key, int *v, size_t n);
/* Append o's members (taken; a small object, may be NULL). */
int fd_answer_members(fd_answer *a, cJSON *o);
/* The last members: tail's (taken; may be NULL), and the end. */
int fd_answer_tail(fd_answer *a, cJSON *tail);
/* 1 when every append succeeded and the tail is in (CSV: always after
 * the rows): the answer can be sent. */
int fd_answer_ok(const fd_answer *a);
/* Fill buf with at most max bytes (max >= 64) of the text; the count, or
 * FD_STREAM_END (-1) after the last byte. */
ssize_t fd_answer_read(void *a, char *buf, size_t max);
void fd_answer_free(void *a);

#endif
