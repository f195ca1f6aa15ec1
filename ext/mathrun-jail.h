/* The commands of mathrun-jail, shared between its source files. */
#ifndef MATHRUN_JAIL_COMMANDS_H
#define MATHRUN_JAIL_COMMANDS_H

/* Print the usage and exit 2. */
void usage(void) __attribute__((noreturn));
/* A non-negative number argument, or exit 2 naming what was bad. */
long long number(const char *s, const char *what);
/* `mathrun-jail run [options] -- PROGRAM [ARG...]`: one job, supervised,
 * and its report line (jail-run.c). */
int jail_run_command(int argc, char **argv);

#endif
