/* cmd.h: the subcommands of the flowd binary. */
#ifndef FLOWD_CMD_H
#define FLOWD_CMD_H

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_import(int argc, char **argv);

#endif
