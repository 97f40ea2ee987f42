/* main.c: the flowd binary dispatches to its subcommands. */
#include "cmd.h"

#include "../common/version.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: flowd COMMAND [OPTIONS]\n"
            "\n"
            "commands:\n"
            "  serve    run the HTTP daemon\n"
            "  migrate  create or upgrade the database\n"
            "  export   write a stored model version to a file\n"
            "  import   store a model file as a new version\n"
            "  train    train one model from a job JSON, in the foreground\n"
            "  eval     score a data file under a model (mean NLL, bits/dim)\n"
            "  sample   draw samples from a model to CSV, .npy or PNG\n"
            "\n"
            "'flowd COMMAND --help' explains each command's options; 'flowd --version'\n"
            "prints the version.\n");
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
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("flowd %s\n", FLOWD_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "serve")) return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(argv[1], "migrate")) return cmd_migrate(argc - 1, argv + 1);
    if (!strcmp(argv[1], "export")) return cmd_export(argc - 1, argv + 1);
    if (!strcmp(argv[1], "import")) return cmd_import(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(argv[1], "sample")) return cmd_sample(argc - 1, argv + 1);
    fprintf(stderr, "flowd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
