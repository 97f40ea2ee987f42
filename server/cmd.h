/* cmd.h: the subcommands of the flowd binary. */
#ifndef FLOWD_CMD_H
#define FLOWD_CMD_H

int cmd_train(int argc, char **argv);

#endif
