/* main.c: the flowd binary dispatches to its subcommands. */
#include "cmd.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: flowd COMMAND [OPTIONS]\n"
            "\n"
            "commands:\n"
            "  train    train one model from a job JSON, in the foreground\n"
            "\n"
            "'flowd COMMAND --help' explains each command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 1, argv + 1);
    fprintf(stderr, "flowd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
